"""The PostgreSQL backend of the async `JobStore` protocol (asyncpg): several orchestrators share one queue.

- A claim takes the best queued job nobody holds with `FOR UPDATE SKIP LOCKED` and leases it: owner,
  lease_until, and a new epoch. The holder renews its leases every TTL/3; any orchestrator re-queues a job
  whose lease ran out (bumping its epoch), so every write of the old holder is fenced out (`AND epoch = $n`,
  checked under the job's row lock) and raises LeaseLost.
- Event appends take a transaction-level advisory lock, so event ids commit in id order and a follower
  reading `id > last` never skips one; the same transaction NOTIFYs every listener.
- A cancel for a job another orchestrator runs sets the job's `cancel_requested` flag and NOTIFYs the job id
  on a channel of its own in one transaction; the holder cancels it on the notification, or at its lease
  keeper's next read of the flag. A job whose lease runs out with the flag set ends cancelled, not re-queued.
- Store-wide chores (retention, webhook redelivery) run under `pg_try_advisory_lock`: one orchestrator at a
  time, the others skip that pass.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from comfymesh.contracts import wirejson
from comfymesh.contracts.events import FINISHED_STATUSES, EventType, JobEvent, JobStatus, NodeState
from comfymesh.contracts.job_order import JobOrder
from comfymesh.jobs.postgres.migrations import migrate
from comfymesh.jobs.protocol import CachedOutputs, DatabaseUnreachableError, JobExists, LeaseLost, PeriodicTask
from comfymesh.jobs.store import _ORDERS, CacheEntry, JobRecord, UnreadableJob, _event, _job

EVENTS_LOCK = 0x636D_0002  # serialises event appends (transaction-level)
CHANNEL = "comfymesh_events"  # NOTIFY payload: the new event's id
PREVIEW_CHANNEL = "comfymesh_previews"  # NOTIFY payload: "<seq> <origin>" of a relayed preview row
PREVIEW_TTL_S = 30.0  # relayed previews older than this are deleted by the next writer
CANCEL_CHANNEL = "comfymesh_cancels"  # NOTIFY payload: the id of a running job whose cancel was requested
# session-level advisory locks of the store-wide chores (same key space as EVENTS_LOCK and MIGRATION_LOCK)
CHORE_LOCKS = {PeriodicTask.RETENTION: 0x636D_0003, PeriodicTask.WEBHOOK_REDELIVERY: 0x636D_0004}
_LIVE = (JobStatus.QUEUED, JobStatus.RUNNING)


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}"


def _scrub(text: str, url: str) -> str:
    password = urlsplit(url).password
    return text.replace(password, "***") if password else text


class PostgresJobStore:
    shared = True

    def __init__(self, pool: Any, url: str, owner: str, lease_ttl_s: float) -> None:
        self._pool = pool
        self._url = url
        self.owner = owner
        self.lease_ttl_s = lease_ttl_s
        # job id -> epoch of the lease this store took; kept after the lease is lost, so that every write of
        # the job is refused, until the job's task ends (`release`)
        self._held: dict[str, int] = {}
        self._listener: Any = None
        self._preview_reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str, *, owner: str = "", lease_ttl_s: float = 15.0, connect_timeout_s: float = 8.0,
                   max_connections: int = 10) -> PostgresJobStore:
        """Connect and migrate. Raises DatabaseUnreachableError within `connect_timeout_s` (plus the
        migration), SchemaTooNewError when newer code migrated the database."""
        try:
            pool = await asyncio.wait_for(
                asyncpg.create_pool(url, min_size=1, max_size=max_connections, timeout=connect_timeout_s),
                connect_timeout_s)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            reason = _scrub(str(exc), url) or type(exc).__name__
            raise DatabaseUnreachableError(f"PostgreSQL at {_where(url)} cannot be reached ({reason}); check "
                                           "COMFYMESH_DATABASE and that the server is up") from None
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
        except BaseException:
            await pool.close()
            raise
        return cls(pool, url, owner or f"orchestrator-{uuid.uuid4().hex[:12]}", lease_ttl_s)

    async def close(self) -> None:
        if self._preview_reader is not None:
            self._preview_reader.cancel()
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        await self._pool.close()

    async def _listening(self) -> Any:
        """The one connection this store LISTENs on (event and cancel notifications)."""
        if self._listener is None:
            self._listener = await asyncpg.connect(self._url)
        return self._listener

    async def listen(self, callback: Callable[[int], None]) -> None:
        """Call `callback(event id)` for every event any orchestrator appends (one dedicated connection)."""
        listener = await self._listening()
        await listener.add_listener(CHANNEL, lambda _conn, _pid, _channel, payload: callback(int(payload)))

    async def listen_cancels(self, callback: Callable[[str], None]) -> None:
        listener = await self._listening()
        await listener.add_listener(CANCEL_CHANNEL, lambda _conn, _pid, _channel, payload: callback(payload))

    async def relay_transient(self, event: JobEvent) -> None:
        now = time.time()
        async with self._pool.acquire() as conn, conn.transaction():
            seq = await conn.fetchval(
                "INSERT INTO previews (origin, job_id, type, node_id, format, data, created) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq", self.owner, event.job_id, event.type,
                event.node_id, str(event.data.get("format", "")), bytes(event.data.get("data", b"")), now)
            await conn.execute("DELETE FROM previews WHERE created < $1", now - PREVIEW_TTL_S)
            await conn.execute("SELECT pg_notify($1, $2)", PREVIEW_CHANNEL, f"{seq} {self.owner}")

    async def listen_transient(self, callback: Callable[[JobEvent], None]) -> None:
        """Each relayed preview of another orchestrator, read by its seq once the NOTIFY names it (the payload
        limit of 8000 bytes is why the image itself goes through the table), one at a time in NOTIFY order."""
        seqs: asyncio.Queue[int] = asyncio.Queue()

        async def read_forever() -> None:
            while True:
                seq = await seqs.get()
                row = await self._pool.fetchrow("SELECT * FROM previews WHERE seq = $1", seq)
                if row is not None:  # pruned already: a preview may be lost
                    callback(JobEvent(0, row["job_id"], row["type"], row["node_id"],
                                      {"format": row["format"], "data": bytes(row["data"])}, 0.0))

        def notified(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            seq, _, origin = payload.partition(" ")
            if origin != self.owner:
                seqs.put_nowait(int(seq))

        self._preview_reader = asyncio.get_running_loop().create_task(read_forever())
        listener = await self._listening()
        await listener.add_listener(PREVIEW_CHANNEL, notified)

    async def request_cancel(self, job_id: str) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            if await conn.fetchval("UPDATE jobs SET cancel_requested = TRUE WHERE id = $1 AND status = $2 RETURNING 1",
                                   job_id, JobStatus.RUNNING) is None:
                return False
            await conn.execute("SELECT pg_notify($1, $2)", CANCEL_CHANNEL, job_id)  # sent at commit
        return True

    async def cancels_requested(self) -> set[str]:
        if not self._held:
            return set()
        rows = await self._pool.fetch("SELECT id FROM jobs WHERE id = ANY($1::text[]) AND cancel_requested "
                                      "AND status = $2", list(self._held), JobStatus.RUNNING)
        return {row[0] for row in rows}

    @asynccontextmanager
    async def exclusive(self, task: PeriodicTask) -> AsyncIterator[bool]:
        # a session lock on a connection kept for the block: it is let go if this orchestrator dies mid-chore
        async with self._pool.acquire() as conn:
            held = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", CHORE_LOCKS[task]))
            try:
                yield held
            finally:
                if held:
                    await conn.execute("SELECT pg_advisory_unlock($1)", CHORE_LOCKS[task])

    async def shared_secret(self, name: str) -> str | None:
        async with self._pool.acquire() as conn:
            # the first orchestrator to ask stores its candidate; everyone then reads the one stored
            await conn.execute("INSERT INTO secrets (name, value, created) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                               name, secrets.token_urlsafe(32), time.time())
            return str(await conn.fetchval("SELECT value FROM secrets WHERE name = $1", name))

    @asynccontextmanager
    async def _tx(self, job_id: str = "") -> AsyncIterator[Any]:
        """One transaction; for a job this store holds, fenced: its row is locked and must still carry the
        epoch of our lease, else LeaseLost and nothing is written."""
        async with self._pool.acquire() as conn, conn.transaction():
            epoch = self._held.get(job_id)
            if epoch is not None and await conn.fetchval(
                    "SELECT 1 FROM jobs WHERE id = $1 AND epoch = $2 FOR UPDATE", job_id, epoch) is None:
                raise LeaseLost(job_id)  # the job stays in `_held`: every later write is refused too
            yield conn

    # jobs --------------------------------------------------------------------------------------
    async def next_number(self) -> int:
        return int(await self._pool.fetchval("SELECT nextval('job_numbers')"))

    async def add_job(self, job_id: str, number: float, prompt: dict[str, Any], extra_data: dict[str, Any],
                      client_id: str, outputs_to_run: list[str], nodes: dict[str, str],
                      submitted: dict[str, Any] | None = None,
                      idempotency: tuple[str, str, str] | None = None) -> JobEvent:
        now = time.time()
        async with self._tx() as conn:
            if idempotency is not None:
                user, key, digest = idempotency
                if await conn.fetchval(
                        "INSERT INTO idempotency_keys (user_name, key, job_id, request_digest) VALUES ($1, $2, $3, $4) "
                        "ON CONFLICT DO NOTHING RETURNING job_id", user, key, job_id, digest) is None:
                    raise JobExists(await self._pool.fetchval(
                        "SELECT job_id FROM idempotency_keys WHERE user_name = $1 AND key = $2", user, key))
            if await conn.fetchval(
                    "INSERT INTO jobs (id, status, number, created, prompt_json, extra_data_json, client_id, "
                    "outputs_to_run, submitted_json) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
                    "ON CONFLICT (id) DO NOTHING RETURNING seq",
                    job_id, JobStatus.QUEUED, number, now, wirejson.dumps(prompt), wirejson.dumps(extra_data),
                    client_id, wirejson.dumps(outputs_to_run),
                    None if submitted is None else wirejson.dumps(submitted)) is None:
                raise JobExists(job_id)
            await conn.executemany(
                "INSERT INTO node_states (job_id, node_id, position, class_type, state) VALUES ($1, $2, $3, $4, $5)",
                [(job_id, node_id, index, class_type, NodeState.PENDING)
                 for index, (node_id, class_type) in enumerate(nodes.items())])
            return await self._append(conn, job_id, EventType.QUEUED, "", {"number": number, "client_id": client_id},
                                      now)

    async def get_job(self, job_id: str) -> JobRecord | None:
        row = await self._pool.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
        return _job(row) if row else None

    async def idempotent_job(self, user: str, key: str) -> tuple[str, str] | None:
        row = await self._pool.fetchrow(
            "SELECT job_id, request_digest FROM idempotency_keys WHERE user_name = $1 AND key = $2", user, key)
        return (str(row[0]), str(row[1])) if row else None

    async def job_status(self, job_id: str) -> str | None:
        status = await self._pool.fetchval("SELECT status FROM jobs WHERE id = $1", job_id)
        return None if status is None else str(status)

    async def list_jobs(self, statuses: list[str] | None = None, limit: int = 0, offset: int = 0,
                        order: JobOrder = JobOrder.QUEUE, workflow_id: str | None = None,
                        count_only: bool = False,
                        after: tuple[float, str] | None = None) -> tuple[list[JobRecord], int]:
        conditions, args = [], list[Any]()
        if statuses:
            args.append(list(statuses))
            conditions.append(f"status = ANY(${len(args)}::text[])")
        if workflow_id is not None:
            args.append(workflow_id)
            conditions.append(f"(extra_data_json::jsonb #>> '{{extra_pnginfo,workflow,id}}') = ${len(args)}")
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        total = int(await self._pool.fetchval(f"SELECT COUNT(*) FROM jobs {where}", *args))
        if count_only:
            return [], total
        past, past_args = where, list(args)
        if after is not None and order == JobOrder.NEWEST:
            n = len(past_args)
            keyset = (f"(created < ${n + 1} OR (created = ${n + 1} AND seq < "
                      f"COALESCE((SELECT seq FROM jobs WHERE id = ${n + 2}), -1)))")
            past = f"{where} AND {keyset}" if where else f"WHERE {keyset}"
            past_args += [after[0], after[1]]
        page = f"LIMIT {int(limit) if limit else 'ALL'} OFFSET {int(offset)}"
        rows = await self._pool.fetch(f"SELECT * FROM jobs {past} ORDER BY {_ORDERS[order]} {page}", *past_args)
        return [_job(row) for row in rows], total

    async def jobs_awaiting_webhook(self) -> list[str]:
        rows = await self._pool.fetch(
            "SELECT id FROM jobs WHERE status = ANY($1::text[]) AND extra_data_json LIKE '%\"webhook_url\"%' "
            "AND id NOT IN (SELECT job_id FROM events WHERE type = ANY($2::text[]))",
            list(FINISHED_STATUSES), [EventType.WEBHOOK_DELIVERED, EventType.WEBHOOK_FAILED])
        return [row[0] for row in rows]

    async def count_jobs(self, status: str) -> int:
        return int(await self._pool.fetchval("SELECT COUNT(*) FROM jobs WHERE status = $1", status))

    async def queued_node_classes(self) -> dict[str, set[str]]:
        classes: dict[str, set[str]] = {}
        for row in await self._pool.fetch("SELECT DISTINCT n.job_id, n.class_type FROM node_states n JOIN jobs j ON j.id = n.job_id WHERE j.status = $1", JobStatus.QUEUED):
            classes.setdefault(row["job_id"], set()).add(row["class_type"])
        return classes

    async def claim_next(self, exclude: set[str]) -> JobRecord | None:
        row = await self._pool.fetchrow(
            "UPDATE jobs SET owner = $1, lease_until = clock_timestamp() + make_interval(secs => $2), "
            "epoch = epoch + 1 WHERE seq = (SELECT seq FROM jobs WHERE status = $3 AND owner IS NULL "
            "AND NOT (id = ANY($4::text[])) ORDER BY number, seq LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING *",
            self.owner, self.lease_ttl_s, JobStatus.QUEUED, list(exclude))
        if row is None:
            return None
        self._held[row["id"]] = int(row["epoch"])
        try:
            return _job(row)
        except ValueError as exc:  # JSON a bad disk or an old bug wrote: only this job is lost
            raise UnreadableJob(row["id"], exc) from exc

    async def _requeue(self, condition: str, *args: Any) -> list[JobEvent]:
        """Re-queue the live jobs matching `condition` (their epoch moves on: old holders are fenced out);
        the running ones get a `requeued` event, except those whose cancel was requested: they end
        cancelled (their holder stopped before it could cancel them)."""
        now = time.time()
        async with self._tx() as conn:
            rows = await conn.fetch(
                f"WITH taken AS (SELECT id, status, cancel_requested FROM jobs WHERE status = ANY($1::text[]) "
                f"AND ({condition}) FOR UPDATE SKIP LOCKED) UPDATE jobs SET owner = NULL, lease_until = NULL, "
                "epoch = epoch + 1, status = CASE WHEN taken.cancel_requested THEN $3 ELSE $2 END, "
                "finished = CASE WHEN taken.cancel_requested THEN $4 ELSE jobs.finished END "
                "FROM taken WHERE jobs.id = taken.id RETURNING jobs.id, taken.status, taken.cancel_requested",
                list(_LIVE), JobStatus.QUEUED, JobStatus.CANCELLED, now, *args)
            events = []
            for job_id, was, cancelled in sorted(rows):
                if was == JobStatus.RUNNING:
                    await conn.execute("UPDATE node_states SET state = $1 WHERE job_id = $2 AND state = $3",
                                       NodeState.PENDING, job_id, NodeState.RUNNING)
                    event, data = (EventType.CANCELLED, {"while": JobStatus.RUNNING}) if cancelled \
                        else (EventType.REQUEUED, {})
                    events.append(await self._append(conn, job_id, event, "", data, now))
        return events

    async def requeue_orphans(self) -> list[JobEvent]:
        return await self._requeue("owner IS NULL AND status = 'running' OR lease_until < clock_timestamp()")

    async def requeue_expired(self) -> list[JobEvent]:
        return await self._requeue("owner IS NOT NULL AND lease_until < clock_timestamp()")

    async def renew_leases(self) -> set[str]:
        held = dict(self._held)
        if not held:
            return set()
        rows = await self._pool.fetch(
            "UPDATE jobs SET lease_until = clock_timestamp() + make_interval(secs => $2) "
            "FROM unnest($3::text[], $4::bigint[]) AS held(id, epoch) "
            "WHERE jobs.id = held.id AND jobs.epoch = held.epoch AND jobs.owner = $1 RETURNING jobs.id",
            self.owner, self.lease_ttl_s, list(held), list(held.values()))
        renewed = {row[0] for row in rows}
        # lost: still held under the epoch that failed (fenced until `release`); a job released and claimed
        # again meanwhile holds a newer epoch, and its new run must not be stopped
        return {job_id for job_id, epoch in held.items() if job_id not in renewed and self._held.get(job_id) == epoch}

    async def release(self, job_id: str) -> None:
        epoch = self._held.pop(job_id, None)
        if epoch is not None:  # a job still live stays leased: hand_back or expiry re-queues it
            await self._pool.execute(
                "UPDATE jobs SET owner = NULL, lease_until = NULL WHERE id = $1 AND epoch = $2 "
                "AND NOT (status = ANY($3::text[]))", job_id, epoch, list(_LIVE))

    async def hand_back(self) -> list[JobEvent]:
        return await self._requeue("owner = $5", self.owner)  # their epochs moved on: our writes are refused

    async def set_status(self, job_id: str, status: str, *, error: dict[str, Any] | None = None,
                         event: str | None = None, data: dict[str, Any] | None = None) -> JobEvent | None:
        async with self._tx(job_id) as conn:
            return await self._set_status(conn, job_id, status, time.time(), error=error, event=event, data=data)

    async def start_job(self, job_id: str, cached: dict[str, dict[str, Any] | None]) -> list[JobEvent]:
        now = time.time()
        async with self._tx(job_id) as conn:
            row = await conn.fetchrow("SELECT client_id, number FROM jobs WHERE id = $1", job_id)
            started = {"client_id": row["client_id"], "number": row["number"]} if row else {}
            records = [await self._set_status(conn, job_id, JobStatus.RUNNING, now, event=EventType.STARTED,
                                              data=started)]
            if cached:
                records.append(await self._set_node_states(
                    conn, job_id, cached, NodeState.CACHED, now, event=EventType.CACHED,
                    data={"nodes": list(cached), "ui": {node: ui for node, ui in cached.items() if ui}}))
        return [record for record in records if record is not None]

    async def _set_status(self, conn: Any, job_id: str, status: str, now: float, *,
                          error: dict[str, Any] | None = None, event: str | None = None,
                          data: dict[str, Any] | None = None) -> JobEvent | None:
        fields = ["status = $1"]
        args: list[Any] = [status]
        if status == JobStatus.RUNNING:
            args.append(now)
            fields.append(f"started = COALESCE(started, ${len(args)})")
        if status in FINISHED_STATUSES:
            args.append(now)
            fields.append(f"finished = ${len(args)}")
            await conn.execute("UPDATE node_states SET state = $1 WHERE job_id = $2 AND state = $3",
                               NodeState.PENDING, job_id, NodeState.RUNNING)
        if error is not None:
            args.append(wirejson.dumps(error))
            fields.append(f"error_json = ${len(args)}")
        args.append(job_id)
        where = f"id = ${len(args)}"
        if job_id in self._held:
            args.append(self._held[job_id])
            where += f" AND epoch = ${len(args)}"
        await conn.execute(f"UPDATE jobs SET {', '.join(fields)} WHERE {where}", *args)
        return await self._append(conn, job_id, event, "", data or {}, now) if event else None

    async def set_node_state(self, job_id: str, node_id: str, state: str, ui: dict[str, Any] | None = None,
                             event: str | None = None, data: dict[str, Any] | None = None,
                             cache: CacheEntry | None = None) -> JobEvent | None:
        return await self.set_node_states(job_id, {node_id: ui}, state, event=event, event_node=node_id, data=data,
                                          cache=[cache] if cache else [])

    async def finish_node(self, job_id: str, node_id: str, ui: dict[str, Any] | None, *, data: dict[str, Any],
                          cache: CacheEntry | None = None,
                          completed: dict[str, Any] | None = None) -> list[JobEvent]:
        now = time.time()
        async with self._tx(job_id) as conn:
            records = [await self._set_node_states(conn, job_id, {node_id: ui}, NodeState.DONE, now,
                                                   event=EventType.NODE_DONE, event_node=node_id, data=data,
                                                   cache=[cache] if cache else [])]
            if completed is not None:
                records.append(await self._set_status(conn, job_id, JobStatus.COMPLETED, now,
                                                      event=EventType.COMPLETED, data=completed))
        return [record for record in records if record is not None]

    async def set_node_states(self, job_id: str, nodes: dict[str, dict[str, Any] | None], state: str, *,
                              event: str | None = None, event_node: str = "", data: dict[str, Any] | None = None,
                              cache: list[CacheEntry] | None = None) -> JobEvent | None:
        async with self._tx(job_id) as conn:
            return await self._set_node_states(conn, job_id, nodes, state, time.time(), event=event,
                                               event_node=event_node, data=data, cache=cache)

    async def _set_node_states(self, conn: Any, job_id: str, nodes: dict[str, dict[str, Any] | None], state: str,
                               now: float, *, event: str | None = None, event_node: str = "",
                               data: dict[str, Any] | None = None,
                               cache: list[CacheEntry] | None = None) -> JobEvent | None:
        await conn.executemany(
            "UPDATE node_states SET state = $1, ui_json = COALESCE($2, ui_json) WHERE job_id = $3 AND node_id = $4",
            [(state, wirejson.dumps(ui) if ui is not None else None, job_id, node_id) for node_id, ui in nodes.items()])
        results = {node_id: ui for node_id, ui in nodes.items() if ui}
        if results:
            stored = await conn.fetchval("SELECT outputs_json FROM jobs WHERE id = $1", job_id)
            outputs = wirejson.loads(stored) if stored else {}
            outputs.update(results)
            await conn.execute("UPDATE jobs SET outputs_json = $1 WHERE id = $2", wirejson.dumps(outputs), job_id)
        for entry in cache or []:
            await self._cache_put(conn, entry, now)
        return await self._append(conn, job_id, event, event_node, data or {}, now) if event else None

    async def node_states(self, job_id: str) -> list[dict[str, Any]]:
        rows = await self._pool.fetch("SELECT node_id, class_type, state, ui_json FROM node_states WHERE job_id = $1 "
                                      "ORDER BY position", job_id)
        return [dict(row) for row in rows]

    async def delete_jobs(self, job_ids: list[str]) -> int:
        async with self._tx() as conn:
            deleted = await conn.fetch("DELETE FROM jobs WHERE id = ANY($1::text[]) RETURNING id", job_ids)
            await conn.execute("DELETE FROM node_states WHERE job_id = ANY($1::text[])", job_ids)
            await conn.execute("DELETE FROM idempotency_keys WHERE job_id = ANY($1::text[])", job_ids)
        return len(deleted)

    # events ------------------------------------------------------------------------------------
    async def _append(self, conn: Any, job_id: str, type_: str, node_id: str, data: dict[str, Any],
                      ts: float) -> JobEvent:
        # held until commit: the next appender waits, so ids become visible in order
        await conn.execute("SELECT pg_advisory_xact_lock($1)", EVENTS_LOCK)
        event_id = await conn.fetchval(
            "INSERT INTO events (job_id, type, node_id, data_json, ts) VALUES ($1, $2, $3, $4, $5) RETURNING id",
            job_id, type_, node_id, wirejson.dumps(data), ts)
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(event_id))
        return JobEvent(int(event_id), job_id, type_, node_id, data, ts)

    async def append_event(self, job_id: str, type_: str, node_id: str = "",
                           data: dict[str, Any] | None = None) -> JobEvent:
        async with self._tx(job_id) as conn:
            return await self._append(conn, job_id, type_, node_id, data or {}, time.time())

    async def events_after(self, after_id: int, job_id: str | None = None, limit: int = 1000) -> list[JobEvent]:
        if job_id:
            rows = await self._pool.fetch("SELECT * FROM events WHERE id > $1 AND job_id = $2 ORDER BY id LIMIT $3",
                                          after_id, job_id, limit)
        else:
            rows = await self._pool.fetch("SELECT * FROM events WHERE id > $1 ORDER BY id LIMIT $2", after_id, limit)
        return [_event(row) for row in rows]

    async def last_event_id(self) -> int:
        return int(await self._pool.fetchval("SELECT COALESCE(MAX(id), 0) FROM events"))

    # node-output cache -------------------------------------------------------------------------
    async def cache_get_many(self, signatures: list[str]) -> dict[str, CachedOutputs]:
        if not signatures:
            return {}
        rows = await self._pool.fetch(
            "UPDATE node_cache SET last_used = $2 WHERE signature = ANY($1::text[]) "
            "RETURNING signature, outputs_json, ui_json", signatures, time.time())
        return {row["signature"]: (wirejson.loads(row["outputs_json"]),
                                   wirejson.loads(row["ui_json"]) if row["ui_json"] else None) for row in rows}

    async def cache_put(self, signature: str, class_type: str, outputs: list[dict[str, Any]],
                        ui: dict[str, Any] | None) -> None:
        async with self._pool.acquire() as conn:
            await self._cache_put(conn, CacheEntry(signature, class_type, outputs, ui), time.time())

    async def _cache_put(self, conn: Any, entry: CacheEntry, now: float) -> None:
        await conn.execute(
            "INSERT INTO node_cache (signature, class_type, outputs_json, ui_json, created, last_used) "
            "VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (signature) DO UPDATE SET class_type = EXCLUDED.class_type, "
            "outputs_json = EXCLUDED.outputs_json, ui_json = EXCLUDED.ui_json, created = EXCLUDED.created, "
            "last_used = EXCLUDED.last_used",
            entry.signature, entry.class_type, wirejson.dumps(entry.outputs),
            wirejson.dumps(entry.ui) if entry.ui else "", now)

    async def cache_rows(self) -> list[tuple[str, str, float]]:
        rows = await self._pool.fetch("SELECT signature, outputs_json, last_used FROM node_cache ORDER BY last_used")
        return [(row[0], row[1], float(row[2])) for row in rows]

    async def cache_delete(self, signature: str) -> None:
        await self._pool.execute("DELETE FROM node_cache WHERE signature = $1", signature)

    async def model_digest(self, location: str, name: str, version: str) -> str | None:
        found = await self._pool.fetchval("SELECT sha256 FROM model_digests WHERE location = $1 AND name = $2 "
                                          "AND version = $3", location, name, version)
        return str(found) if found is not None else None

    async def record_model_digest(self, location: str, name: str, version: str, size: int, sha256: str) -> None:
        await self._pool.execute(
            "INSERT INTO model_digests (location, name, version, size, sha256, recorded) VALUES ($1, $2, $3, $4, $5, $6) "
            "ON CONFLICT (location, name) DO UPDATE SET version = EXCLUDED.version, size = EXCLUDED.size, "
            "sha256 = EXCLUDED.sha256, recorded = EXCLUDED.recorded", location, name, version, size, sha256, time.time())
