"""The SQLite job store: persistence, queue order, event log and cache survive reopening."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from comfymesh.contracts.events import JobStatus
from comfymesh.jobs import CacheEntry, DamagedDatabaseError, JobStore
from comfymesh.jobs.store import _SCHEMA


def add(store: JobStore, job_id: str, number: float) -> None:
    store.add_job(job_id, number, {"1": {"class_type": "X", "inputs": {}}}, {}, "client", ["1"], {"1": "X"})


def test_accepted_jobs_survive_a_reopen(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    add(store, "a", 1)
    store.close()
    reopened = JobStore(tmp_path / "jobs.db")
    job = reopened.get_job("a")
    assert job is not None and job.status == JobStatus.QUEUED and job.client_id == "client"
    assert [e.type for e in reopened.events_after(0)] == ["queued"]


def test_queue_order_is_number_then_arrival(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    add(store, "late", 5)
    add(store, "front", -1)
    add(store, "early", 5)
    order = []
    while (job := store.next_queued(set(order))) is not None:
        order.append(job.id)
    assert order == ["front", "late", "early"]


def test_event_ids_increase_and_filter_by_job(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    add(store, "a", 1)
    add(store, "b", 2)
    store.set_status("a", JobStatus.RUNNING, event="started")
    store.set_node_state("a", "1", "done", {"images": [{"filename": "x.png"}]}, event="node_done")
    store.set_status("a", JobStatus.COMPLETED, event="completed")
    events = store.events_after(0)
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert [e.type for e in store.events_after(0, "a")] == ["queued", "started", "node_done", "completed"]
    assert [e.type for e in store.events_after(events[2].id, "a")] == ["node_done", "completed"]
    job = store.get_job("a")
    assert job is not None and job.outputs == {"1": {"images": [{"filename": "x.png"}]}}
    assert job.finished is not None and job.started is not None


def test_node_cache_round_trip(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    assert store.cache_get("sig") is None
    store.cache_put("sig", "ImageInvert", [{"type": "IMAGE", "json": "1"}], None)
    assert store.cache_get("sig") == ([{"type": "IMAGE", "json": "1"}], None)
    store.close()
    assert JobStore(tmp_path / "jobs.db").cache_get("sig") is not None


def test_node_result_state_cache_and_event_in_one_transaction(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    store.add_job("a", 1, {"1": {"class_type": "X", "inputs": {}}, "2": {"class_type": "Y", "inputs": {}}}, {}, "",
                  ["2"], {"1": "X", "2": "Y"})
    event = store.set_node_state("a", "1", "done", None, event="node_done",
                                 cache=CacheEntry("sig1", "X", [{"type": "LATENT", "json": "1"}], None))
    assert event is not None and event.node_id == "1"
    assert store.cache_get("sig1") == ([{"type": "LATENT", "json": "1"}], None)
    # several nodes served from cache: their states and UI results, and one `cached` event
    cached = store.set_node_states("a", {"1": None, "2": {"images": [{"filename": "y.png"}]}}, "cached",
                                   event="cached", data={"nodes": ["1", "2"]})
    assert cached is not None and cached.type == "cached" and cached.data == {"nodes": ["1", "2"]}
    assert [(n["node_id"], n["state"]) for n in store.node_states("a")] == [("1", "cached"), ("2", "cached")]
    job = store.get_job("a")
    assert job is not None and job.outputs == {"2": {"images": [{"filename": "y.png"}]}}
    assert store.job_status("a") == "queued" and store.job_status("nope") is None


def test_cache_lookup_of_many_signatures_marks_only_hits_used(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    store.cache_put("old", "X", [], None)
    store.cache_put("other", "X", [], {"images": []})
    before = dict((sig, used) for sig, _, used in store.cache_rows())
    hits = store.cache_get_many(["old", "missing"])
    assert set(hits) == {"old"} and hits["old"] == ([], None)
    after = dict((sig, used) for sig, _, used in store.cache_rows())
    assert after["old"] >= before["old"] and after["other"] == before["other"]
    assert store.cache_get_many([]) == {}


def test_start_job_writes_started_then_cached_together(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    store.add_job("a", 1, {"1": {"class_type": "X", "inputs": {}}, "2": {"class_type": "Y", "inputs": {}}}, {},
                  "client", ["2"], {"1": "X", "2": "Y"})
    records = store.start_job("a", {"1": None, "2": {"images": [{"filename": "old.png"}]}})
    # what a client shows comes with the events: the job's client and number, the cached nodes' UI results
    assert [(r.type, r.data) for r in records] == [
        ("started", {"client_id": "client", "number": 1}),
        ("cached", {"nodes": ["1", "2"], "ui": {"2": {"images": [{"filename": "old.png"}]}}})]
    assert [e.id for e in store.events_after(0, "a")][-2:] == [r.id for r in records]
    job = store.get_job("a")
    assert job is not None and job.status == JobStatus.RUNNING and job.started is not None
    assert job.outputs == {"2": {"images": [{"filename": "old.png"}]}}
    assert {n["node_id"]: n["state"] for n in store.node_states("a")} == {"1": "cached", "2": "cached"}
    # nothing cached: `started` alone
    add(store, "b", 2)
    assert [r.type for r in store.start_job("b", {})] == ["started"]


def test_last_result_and_completion_in_one_transaction(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    add(store, "a", 1)
    store.start_job("a", {})
    ui = {"images": [{"filename": "z.png"}]}
    records = store.finish_node("a", "1", ui, data={"output": ui}, cache=CacheEntry("sig", "X", [], ui),
                                completed={"images": ui["images"]})
    assert [(r.type, r.node_id) for r in records] == [("node_done", "1"), ("completed", "")]
    assert records[0].ts == records[1].ts  # one transaction, one timestamp
    job = store.get_job("a")
    assert job is not None and job.status == JobStatus.COMPLETED and job.outputs == {"1": ui}
    assert store.cache_get("sig") == ([], ui)
    assert [e.type for e in store.events_after(0, "a")] == ["queued", "started", "node_done", "completed"]
    # a result that is not the last leaves the job running
    add(store, "b", 2)
    store.start_job("b", {})
    assert [r.type for r in store.finish_node("b", "1", None, data={})] == ["node_done"]
    assert store.job_status("b") == JobStatus.RUNNING


def test_the_database_and_its_wal_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = JobStore(path)
    add(store, "a", 1)
    parts = [path, path.with_name("jobs.db-wal"), path.with_name("jobs.db-shm")]
    assert [oct(part.stat().st_mode & 0o777) for part in parts] == ["0o600"] * 3
    store.close()
    path.chmod(0o644)  # made by an older version: tightened at the next start
    JobStore(path).close()
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_a_damaged_file_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = JobStore(path)
    add(store, "a", 1)
    store.close()
    with path.open("r+b") as handle:
        handle.write(b"not a database, " * 16)  # over the header
    with pytest.raises(DamagedDatabaseError, match="is damaged") as refused:
        JobStore(path)
    assert str(path) in str(refused.value) and "backup" in str(refused.value) and ".recover" in str(refused.value)


def test_submitted_prompt_kept_beside_the_validated_one_and_old_stores_upgraded(tmp_path: Path) -> None:
    validated = {"1": {"class_type": "X", "inputs": {"n": 7}}}
    submitted = {"1": {"class_type": "X", "inputs": {"n": "7"}, "_meta": {"title": "Mine"}}}
    path = tmp_path / "jobs.db"
    old = sqlite3.connect(path)  # a store made before jobs kept their submitted prompt
    old.executescript(_SCHEMA.replace(",\n    submitted_json TEXT", ""))
    old.execute("INSERT INTO jobs (id, status, number, created, prompt_json, extra_data_json, outputs_to_run) "
                "VALUES ('old', 'queued', 1, 0, ?, '{}', '[]')", (json.dumps(validated),))
    old.commit()
    old.close()
    store = JobStore(path)
    store.add_job("new", 2, validated, {}, "", ["1"], {"1": "X"}, submitted=submitted)
    old_job, new_job = store.get_job("old"), store.get_job("new")
    assert old_job is not None and old_job.submitted == old_job.prompt == validated
    assert new_job is not None and new_job.prompt == validated and new_job.submitted == submitted


def test_idempotency_keys_live_beside_their_job_per_user(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    store.add_job("job-1", 1, {"1": {"class_type": "X", "inputs": {}}}, {}, "", ["1"], {"1": "X"},
                  idempotency=("alice", "key", "d" * 64))
    assert store.idempotent_job("alice", "key") == ("job-1", "d" * 64)
    assert store.idempotent_job("bob", "key") is None  # another user's key space
    assert store.get_job("key") is None  # the key is not a job id
    store.close()
    reopened = JobStore(tmp_path / "jobs.db")
    assert reopened.idempotent_job("alice", "key") == ("job-1", "d" * 64)
    reopened.delete_jobs(["job-1"])
    assert reopened.idempotent_job("alice", "key") is None  # a deleted job frees its key


def test_a_finished_jobs_running_nodes_go_back_to_pending(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    store.add_job("j", 1, {}, {}, "", ["2"], {"1": "Load", "2": "KSampler", "3": "Save"})
    store.start_job("j", {})
    store.set_node_state("j", "1", "done")
    store.set_node_state("j", "2", "running")
    store.set_status("j", JobStatus.CANCELLED, event="cancelled")
    assert {n["node_id"]: n["state"] for n in store.node_states("j")} == {"1": "done", "2": "pending",
                                                                           "3": "pending"}
