"""SQLite job store. One writer (the orchestrator); WAL so readers never block it.

Accepted means persisted: `add_job` commits before the caller learns the job id. The file is private
(0600, with its WAL and shared-memory files) and checked for damage before the store opens.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfymesh.contracts import wirejson
from comfymesh.contracts.events import FINISHED_STATUSES, EventType, JobEvent, JobStatus, NodeState
from comfymesh.contracts.job_order import JobOrder

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    status TEXT NOT NULL,
    number REAL NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    prompt_json TEXT NOT NULL,
    extra_data_json TEXT NOT NULL,
    client_id TEXT NOT NULL DEFAULT '',
    outputs_to_run TEXT NOT NULL,
    outputs_json TEXT NOT NULL DEFAULT '{}',
    error_json TEXT,
    submitted_json TEXT
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs(status, number, seq);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    user TEXT NOT NULL,
    key TEXT NOT NULL,
    job_id TEXT NOT NULL,
    request_digest TEXT NOT NULL,
    PRIMARY KEY (user, key)
);
CREATE INDEX IF NOT EXISTS idempotency_job ON idempotency_keys(job_id);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    type TEXT NOT NULL,
    node_id TEXT NOT NULL DEFAULT '',
    data_json TEXT NOT NULL DEFAULT '{}',
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id, id);
CREATE TABLE IF NOT EXISTS node_states (
    job_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    class_type TEXT NOT NULL,
    state TEXT NOT NULL,
    ui_json TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, node_id)
);
CREATE TABLE IF NOT EXISTS node_cache (
    signature TEXT PRIMARY KEY,
    class_type TEXT NOT NULL,
    outputs_json TEXT NOT NULL,
    ui_json TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    last_used REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS model_digests (
    location TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    recorded REAL NOT NULL,
    PRIMARY KEY (location, name)
);
"""


# a job's execution time; 0 until it has both ends
_DURATION = "(CASE WHEN finished IS NULL OR started IS NULL THEN 0 ELSE finished - started END)"
_ORDERS = {JobOrder.QUEUE: "number, seq", JobOrder.NEWEST: "created DESC, seq DESC",
           JobOrder.OLDEST: "created, seq", JobOrder.LONGEST: f"{_DURATION} DESC, created DESC, seq DESC",
           JobOrder.SHORTEST: f"{_DURATION}, created DESC, seq DESC"}


@dataclass
class JobRecord:
    id: str
    status: str
    number: float
    created: float
    started: float | None
    finished: float | None
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    client_id: str
    outputs_to_run: list[str]
    outputs: dict[str, Any]
    error: dict[str, Any] | None
    # the prompt as the client sent it (titles in `_meta`, values uncoerced): what clients read back and
    # what PNGs record; `prompt` (validated) drives execution and cache signatures
    submitted: dict[str, Any]


@dataclass
class CacheEntry:
    """A node's outputs (and UI result) under its content signature."""

    signature: str
    class_type: str
    outputs: list[dict[str, Any]]
    ui: dict[str, Any] | None


def _job(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        id=row["id"], status=row["status"], number=row["number"], created=row["created"],
        started=row["started"], finished=row["finished"], prompt=wirejson.loads(row["prompt_json"]),
        extra_data=wirejson.loads(row["extra_data_json"]), client_id=row["client_id"],
        outputs_to_run=wirejson.loads(row["outputs_to_run"]), outputs=wirejson.loads(row["outputs_json"]),
        error=wirejson.loads(row["error_json"]) if row["error_json"] else None,
        submitted=wirejson.loads(row["submitted_json"] or row["prompt_json"]))


def _event(row: sqlite3.Row) -> JobEvent:
    return JobEvent(row["id"], row["job_id"], row["type"], row["node_id"], wirejson.loads(row["data_json"]),
                    row["ts"])


class UnreadableJob(Exception):
    """One job's row cannot be read back (its JSON is damaged); the dispatcher fails that job alone."""

    def __init__(self, job_id: str, cause: Exception) -> None:
        super().__init__(f"the stored job {job_id} cannot be read ({cause}); submit it again")
        self.job_id = job_id


class DamagedDatabaseError(Exception):
    """The job database cannot be trusted; the message names the file and what to do."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(
            f"the job database {path} is damaged ({problem}). Nothing was changed. Stop every comfymesh "
            f"service, then either restore {path} from a backup, or keep what can still be read "
            f"(`sqlite3 {path} .recover | sqlite3 {path}.recovered`, then move {path}.recovered to {path}), or "
            f"move {path} and its -wal and -shm files aside to start with an empty job store.")
        self.path = path


def _make_private(path: Path) -> None:
    """Create the database file (and tighten an existing one and its WAL and shared-memory files) to 0600:
    prompts, outputs and users are nobody else's business. SQLite gives new WAL files the database's mode."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for part in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if part.exists():
            os.chmod(part, 0o600)


def _quick_check(db: sqlite3.Connection) -> str:
    """'' when SQLite's quick_check finds nothing wrong, else its first findings (or the error it raised).

    quick_check reads every page (about 0.1 s for 10,000 jobs, ~100 MB); integrity_check also matches
    every index against its table and takes three times longer."""
    try:
        rows = [str(row[0]) for row in db.execute("PRAGMA quick_check(5)").fetchall()]
    except sqlite3.DatabaseError as exc:
        return str(exc)
    return "" if rows == ["ok"] else "; ".join(rows)


class JobStore:
    """Synchronous and thread-safe; the orchestrator calls it through `asyncio.to_thread`."""

    def __init__(self, path: Path) -> None:
        """Open (or create) the store; raises DamagedDatabaseError when the file fails SQLite's check."""
        path.parent.mkdir(parents=True, exist_ok=True)
        _make_private(path)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        problem = _quick_check(self._db)
        if problem:
            self._db.close()
            raise DamagedDatabaseError(path, problem)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            columns = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
            if "submitted_json" not in columns:  # a store made before jobs kept their submitted prompt
                self._db.execute("ALTER TABLE jobs ADD COLUMN submitted_json TEXT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # jobs ------------------------------------------------------------------------------------
    def add_job(self, job_id: str, number: float, prompt: dict[str, Any], extra_data: dict[str, Any],
                client_id: str, outputs_to_run: list[str], nodes: dict[str, str],
                submitted: dict[str, Any] | None = None,
                idempotency: tuple[str, str, str] | None = None) -> JobEvent:
        """Persist a job, its node list and its `queued` event in one transaction. `prompt` is the validated
        prompt; `submitted` the prompt as sent (None: the same); `idempotency`: (user, key, request digest)
        to remember beside the job."""
        with self._transaction() as now:
            self._db.execute(
                "INSERT INTO jobs (id, status, number, created, prompt_json, extra_data_json, client_id, "
                "outputs_to_run, submitted_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, JobStatus.QUEUED, number, now, wirejson.dumps(prompt), wirejson.dumps(extra_data),
                 client_id, wirejson.dumps(outputs_to_run),
                 None if submitted is None else wirejson.dumps(submitted)))
            if idempotency is not None:
                user, key, digest = idempotency
                self._db.execute("INSERT INTO idempotency_keys (user, key, job_id, request_digest) VALUES (?, ?, ?, ?)",
                                 (user, key, job_id, digest))
            self._db.executemany(
                "INSERT INTO node_states (job_id, node_id, class_type, state) VALUES (?, ?, ?, ?)",
                [(job_id, node_id, class_type, NodeState.PENDING) for node_id, class_type in nodes.items()])
            # what a client shows for a new job, so it need not read the job back
            return self._append(job_id, EventType.QUEUED, "", {"number": number, "client_id": client_id}, now)

    def get_job(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def idempotent_job(self, user: str, key: str) -> tuple[str, str] | None:
        """(job id, request digest) of the job `user` made with idempotency `key`, or None."""
        with self._lock:
            row = self._db.execute("SELECT job_id, request_digest FROM idempotency_keys WHERE user = ? AND key = ?",
                                   (user, key)).fetchone()
        return (str(row[0]), str(row[1])) if row else None

    def job_status(self, job_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return str(row[0]) if row else None

    def list_jobs(self, statuses: list[str] | None = None, limit: int = 0, offset: int = 0,
                  order: JobOrder = JobOrder.QUEUE, workflow_id: str | None = None,
                  count_only: bool = False,
                  after: tuple[float, str] | None = None) -> tuple[list[JobRecord], int]:
        """One page of the jobs in `statuses` (all when None), in `order` (limit 0: to the end), and how
        many jobs match; `workflow_id`: only jobs of that frontend workflow (extra_pnginfo.workflow.id);
        `after` (created, job id), newest first only: the page starts past that job (the total ignores it)."""
        conditions, args = [], []
        if statuses:
            conditions.append(f"status IN ({','.join('?' * len(statuses))})")
            args += list(statuses)
        if workflow_id is not None:
            conditions.append("json_extract(extra_data_json, '$.extra_pnginfo.workflow.id') = ?")
            args.append(workflow_id)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        page = f"LIMIT {int(limit)} OFFSET {int(offset)}" if limit else f"LIMIT -1 OFFSET {int(offset)}"
        past, past_args = where, list[Any](args)
        if after is not None and order == JobOrder.NEWEST:
            # the anchor's seq breaks ties of `created`; a deleted anchor leaves only its time to go by
            keyset = ("(created < ? OR (created = ? AND seq < COALESCE((SELECT seq FROM jobs WHERE id = ?), -1)))")
            past = f"{where} AND {keyset}" if where else f"WHERE {keyset}"
            past_args += [after[0], after[0], after[1]]
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM jobs {where}", args).fetchone()[0]
            if count_only:
                return [], int(total)
            rows = self._db.execute(f"SELECT * FROM jobs {past} ORDER BY {_ORDERS[order]} {page}",
                                    past_args).fetchall()
        return [_job(row) for row in rows], int(total)

    def jobs_awaiting_webhook(self) -> list[str]:
        """Finished jobs that asked for a webhook whose delivery never ended (the sender died first)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM jobs WHERE status IN (?, ?, ?) "
                "AND extra_data_json LIKE '%\"webhook_url\"%' AND id NOT IN "
                "(SELECT job_id FROM events WHERE type IN (?, ?))",
                (*FINISHED_STATUSES, EventType.WEBHOOK_DELIVERED, EventType.WEBHOOK_FAILED)).fetchall()
        return [row[0] for row in rows]

    def highest_number(self) -> float:
        """The largest queue number in use, either sign (read without any job's JSON, damaged or not)."""
        with self._lock:
            return float(self._db.execute("SELECT COALESCE(MAX(ABS(number)), 0) FROM jobs").fetchone()[0])

    def count_jobs(self, status: str) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM jobs WHERE status = ?", (status,)).fetchone()[0])

    def queued_node_classes(self) -> dict[str, set[str]]:
        """Each queued job's node class types (queue depth per stage, for /metrics)."""
        classes: dict[str, set[str]] = {}
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT n.job_id, n.class_type FROM node_states n JOIN jobs j ON j.id = n.job_id WHERE j.status = ?", (JobStatus.QUEUED,)).fetchall()
        for job_id, class_type in rows:
            classes.setdefault(job_id, set()).add(class_type)
        return classes

    def next_queued(self, exclude: set[str]) -> JobRecord | None:
        """The queued job with the smallest number (then oldest), skipping ones already taken."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE status = ? ORDER BY number, seq LIMIT ?",
                (JobStatus.QUEUED, len(exclude) + 1)).fetchall()
        for row in rows:
            if row["id"] not in exclude:
                try:
                    return _job(row)
                except ValueError as exc:  # JSON a bad disk or an old bug wrote: only this job is lost
                    raise UnreadableJob(row["id"], exc) from exc
        return None

    def jobs_in(self, status: str) -> list[JobRecord]:
        return self.list_jobs([status])[0]

    def set_status(self, job_id: str, status: str, *, error: dict[str, Any] | None = None,
                   event: str | None = None, data: dict[str, Any] | None = None) -> JobEvent | None:
        """Change a job's status and append its event atomically."""
        with self._transaction() as now:
            return self._set_status(job_id, status, now, error=error, event=event, data=data)

    def start_job(self, job_id: str, cached: dict[str, dict[str, Any] | None]) -> list[JobEvent]:
        """Mark a job running (`started`) and the nodes served from cache (`cached`), in one transaction."""
        with self._transaction() as now:
            row = self._db.execute("SELECT client_id, number FROM jobs WHERE id = ?", (job_id,)).fetchone()
            started = {"client_id": row["client_id"], "number": row["number"]} if row else {}
            records = [self._set_status(job_id, JobStatus.RUNNING, now, event=EventType.STARTED, data=started)]
            if cached:
                # the cached output nodes' UI results ride along: a client replays them as ComfyUI does
                records.append(self._set_node_states(job_id, cached, NodeState.CACHED, now, event=EventType.CACHED,
                                                     data={"nodes": list(cached),
                                                           "ui": {node: ui for node, ui in cached.items() if ui}}))
        return [record for record in records if record is not None]

    @contextmanager
    def _transaction(self) -> Iterator[float]:
        """One write transaction under the store's lock; yields its timestamp."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield time.time()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _set_status(self, job_id: str, status: str, now: float, *, error: dict[str, Any] | None = None,
                    event: str | None = None, data: dict[str, Any] | None = None) -> JobEvent | None:
        fields = ["status = ?"]
        args: list[Any] = [status]
        if status == JobStatus.RUNNING:
            fields.append("started = COALESCE(started, ?)")
            args.append(now)
        if status in FINISHED_STATUSES:
            fields.append("finished = ?")
            args.append(now)
            # a node a cancel or failure cut short did not run to its end: it reads pending, never running
            self._db.execute("UPDATE node_states SET state = ? WHERE job_id = ? AND state = ?",
                             (NodeState.PENDING, job_id, NodeState.RUNNING))
        if error is not None:
            fields.append("error_json = ?")
            args.append(wirejson.dumps(error))
        self._db.execute(f"UPDATE jobs SET {', '.join(fields)} WHERE id = ?", [*args, job_id])
        return self._append(job_id, event, "", data or {}, now) if event else None

    def set_node_state(self, job_id: str, node_id: str, state: str, ui: dict[str, Any] | None = None,
                       event: str | None = None, data: dict[str, Any] | None = None,
                       cache: CacheEntry | None = None) -> JobEvent | None:
        """Change one node's state (and its UI result), append its event and, given `cache`, store the
        node's outputs in the cache: one transaction."""
        return self.set_node_states(job_id, {node_id: ui}, state, event=event, event_node=node_id, data=data,
                                    cache=[cache] if cache else [])

    def finish_node(self, job_id: str, node_id: str, ui: dict[str, Any] | None, *, data: dict[str, Any],
                    cache: CacheEntry | None = None, completed: dict[str, Any] | None = None) -> list[JobEvent]:
        """A node's result (state `done`, UI result, `node_done` event, cache entry) and, given `completed`
        (the event's data), the job's completion: one transaction, so a job's last result costs one commit."""
        with self._transaction() as now:
            records = [self._set_node_states(job_id, {node_id: ui}, NodeState.DONE, now,
                                             event=EventType.NODE_DONE,
                                             event_node=node_id, data=data, cache=[cache] if cache else [])]
            if completed is not None:
                records.append(self._set_status(job_id, JobStatus.COMPLETED, now, event=EventType.COMPLETED,
                                                data=completed))
        return [record for record in records if record is not None]

    def set_node_states(self, job_id: str, nodes: dict[str, dict[str, Any] | None], state: str, *,
                        event: str | None = None, event_node: str = "", data: dict[str, Any] | None = None,
                        cache: list[CacheEntry] | None = None) -> JobEvent | None:
        """Set several nodes to `state` (with their UI results) and append at most one event, atomically."""
        with self._transaction() as now:
            return self._set_node_states(job_id, nodes, state, now, event=event, event_node=event_node,
                                         data=data, cache=cache)

    def _set_node_states(self, job_id: str, nodes: dict[str, dict[str, Any] | None], state: str, now: float, *,
                         event: str | None = None, event_node: str = "", data: dict[str, Any] | None = None,
                         cache: list[CacheEntry] | None = None) -> JobEvent | None:
        self._db.executemany("UPDATE node_states SET state = ?, ui_json = COALESCE(?, ui_json) "
                             "WHERE job_id = ? AND node_id = ?",
                             [(state, wirejson.dumps(ui) if ui is not None else None, job_id, node_id)
                              for node_id, ui in nodes.items()])
        results = {node_id: ui for node_id, ui in nodes.items() if ui}
        if results:
            row = self._db.execute("SELECT outputs_json FROM jobs WHERE id = ?", (job_id,)).fetchone()
            outputs = wirejson.loads(row["outputs_json"]) if row else {}
            outputs.update(results)
            self._db.execute("UPDATE jobs SET outputs_json = ? WHERE id = ?", (wirejson.dumps(outputs), job_id))
        for entry in cache or []:
            self._cache_put(entry, now)
        return self._append(job_id, event, event_node, data or {}, now) if event else None

    def node_states(self, job_id: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT node_id, class_type, state, ui_json FROM node_states WHERE job_id = ? "
                                    "ORDER BY rowid", (job_id,)).fetchall()
        return [dict(row) for row in rows]

    def delete_jobs(self, job_ids: list[str]) -> int:
        with self._lock:
            marks = ",".join("?" * len(job_ids))
            count = self._db.execute(f"DELETE FROM jobs WHERE id IN ({marks})", job_ids).rowcount
            self._db.execute(f"DELETE FROM node_states WHERE job_id IN ({marks})", job_ids)
            self._db.execute(f"DELETE FROM idempotency_keys WHERE job_id IN ({marks})", job_ids)
        return int(count)

    # events ----------------------------------------------------------------------------------
    def _append(self, job_id: str, type_: str, node_id: str, data: dict[str, Any], ts: float) -> JobEvent:
        cursor = self._db.execute("INSERT INTO events (job_id, type, node_id, data_json, ts) VALUES (?, ?, ?, ?, ?)",
                                  (job_id, type_, node_id, wirejson.dumps(data), ts))
        return JobEvent(int(cursor.lastrowid or 0), job_id, type_, node_id, data, ts)

    def append_event(self, job_id: str, type_: str, node_id: str = "",
                     data: dict[str, Any] | None = None) -> JobEvent:
        with self._lock:
            return self._append(job_id, type_, node_id, data or {}, time.time())

    def events_after(self, after_id: int, job_id: str | None = None, limit: int = 1000) -> list[JobEvent]:
        with self._lock:
            if job_id:
                rows = self._db.execute("SELECT * FROM events WHERE id > ? AND job_id = ? ORDER BY id LIMIT ?",
                                        (after_id, job_id, limit)).fetchall()
            else:
                rows = self._db.execute("SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?",
                                        (after_id, limit)).fetchall()
        return [_event(row) for row in rows]

    def last_event_id(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])

    # node-output cache -----------------------------------------------------------------------
    def cache_get(self, signature: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None] | None:
        return self.cache_get_many([signature]).get(signature)

    def cache_get_many(self, signatures: list[str]) -> dict[str, tuple[list[dict[str, Any]], dict[str, Any] | None]]:
        """The cache entries of these signatures that exist ({signature: (outputs, ui)}), marked as used."""
        if not signatures:
            return {}
        with self._lock:
            marks = ",".join("?" * len(signatures))
            rows = self._db.execute(f"SELECT signature, outputs_json, ui_json FROM node_cache WHERE signature IN "
                                    f"({marks})", signatures).fetchall()
            if rows:
                self._db.executemany("UPDATE node_cache SET last_used = ? WHERE signature = ?",
                                     [(time.time(), row["signature"]) for row in rows])
        return {row["signature"]: (wirejson.loads(row["outputs_json"]), wirejson.loads(row["ui_json"]) if row["ui_json"] else None)
                for row in rows}

    def cache_put(self, signature: str, class_type: str, outputs: list[dict[str, Any]],
                  ui: dict[str, Any] | None) -> None:
        with self._lock:
            self._cache_put(CacheEntry(signature, class_type, outputs, ui), time.time())

    def _cache_put(self, entry: CacheEntry, now: float) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO node_cache (signature, class_type, outputs_json, ui_json, created, last_used) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (entry.signature, entry.class_type, wirejson.dumps(entry.outputs), wirejson.dumps(entry.ui) if entry.ui else "",
             now, now))

    def cache_rows(self) -> list[tuple[str, str, float]]:
        """(signature, outputs JSON, last use) of every cache entry, least recently used first."""
        with self._lock:
            rows = self._db.execute("SELECT signature, outputs_json, last_used FROM node_cache ORDER BY last_used")
            return [(row[0], row[1], float(row[2])) for row in rows.fetchall()]

    def cache_delete(self, signature: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM node_cache WHERE signature = ?", (signature,))

    def model_digest(self, location: str, name: str, version: str) -> str | None:
        """The sha256 recorded for model file `name` of `location` at `version`; None if unknown or changed."""
        with self._lock:
            row = self._db.execute("SELECT sha256 FROM model_digests WHERE location = ? AND name = ? AND version = ?",
                                   (location, name, version)).fetchone()
        return str(row[0]) if row else None

    def record_model_digest(self, location: str, name: str, version: str, size: int, sha256: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO model_digests (location, name, version, size, sha256, recorded) "
                             "VALUES (?, ?, ?, ?, ?, ?)", (location, name, version, size, sha256, time.time()))
