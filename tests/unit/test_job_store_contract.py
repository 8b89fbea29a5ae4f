"""One contract for every job store backend: the same calls, the same answers, on SQLite and on a real
PostgreSQL 15 (tests/postgres.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from comfymesh.contracts.events import EventType, JobStatus, NodeState
from comfymesh.contracts.job_order import JobOrder
from comfymesh.jobs.protocol import AsyncJobStore, JobExists, PeriodicTask
from comfymesh.jobs.sqlite_backend import SqliteJobStore
from comfymesh.jobs.store import CacheEntry
from tests.postgres import PostgresServer, postgres  # noqa: F401 (fixture)

PROMPT = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8}}}
NODES = {"1": "EmptyImage", "2": "SaveImage", "3": "PreviewImage"}


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncJobStore]:
    if request.param == "sqlite":
        opened: AsyncJobStore = SqliteJobStore(tmp_path / "jobs.db")
    else:
        from comfymesh.jobs.postgres.store import PostgresJobStore

        server: PostgresServer = request.getfixturevalue("postgres")
        opened = await PostgresJobStore.open(server.new_database(), owner="contract")
    try:
        yield opened
    finally:
        await opened.close()


async def add(store: AsyncJobStore, job_id: str, number: float, **kwargs: object) -> None:
    await store.add_job(job_id, number, PROMPT, {"extra_pnginfo": {"workflow": {"id": f"wf-{job_id}"}}}, "client",
                        ["2"], NODES, **kwargs)  # type: ignore[arg-type]


async def test_a_job_is_stored_with_its_nodes_and_queued_event(store: AsyncJobStore) -> None:
    event = await store.add_job("a", 1, PROMPT, {"k": 1}, "cid", ["2"], NODES, submitted={"as": "sent"})
    assert (event.job_id, event.type, event.data) == ("a", EventType.QUEUED, {"number": 1, "client_id": "cid"})
    job = await store.get_job("a")
    assert job is not None
    assert (job.status, job.number, job.prompt, job.extra_data, job.client_id, job.outputs_to_run, job.submitted) == \
        (JobStatus.QUEUED, 1, PROMPT, {"k": 1}, "cid", ["2"], {"as": "sent"})
    assert [(n["node_id"], n["class_type"], n["state"]) for n in await store.node_states("a")] == \
        [("1", "EmptyImage", NodeState.PENDING), ("2", "SaveImage", NodeState.PENDING),
         ("3", "PreviewImage", NodeState.PENDING)]
    assert await store.job_status("a") == JobStatus.QUEUED
    assert await store.get_job("missing") is None and await store.job_status("missing") is None


async def test_a_taken_id_or_idempotency_key_is_refused(store: AsyncJobStore) -> None:
    await add(store, "a", 1, idempotency=("ann", "key-1", "digest"))
    with pytest.raises(JobExists) as taken:
        await add(store, "a", 2)
    assert taken.value.job_id == "a"
    with pytest.raises(JobExists) as keyed:
        await add(store, "b", 2, idempotency=("ann", "key-1", "digest"))
    assert keyed.value.job_id == "a"
    assert await store.get_job("b") is None  # nothing of the refused submit stayed
    assert await store.idempotent_job("ann", "key-1") == ("a", "digest")
    assert await store.idempotent_job("bob", "key-1") is None


async def test_queue_numbers_increase(store: AsyncJobStore) -> None:
    numbers = [await store.next_number() for _ in range(3)]
    assert numbers[1] == numbers[0] + 1 and numbers[2] == numbers[0] + 2


async def test_claims_take_the_best_number_then_the_oldest(store: AsyncJobStore) -> None:
    for job_id, number in (("late", 5), ("first", -1), ("tie-a", 2), ("tie-b", 2)):
        await add(store, job_id, number)
    taken: set[str] = set()
    order = []
    while (job := await store.claim_next(taken)) is not None:
        taken.add(job.id)
        order.append(job.id)
    assert order == ["first", "tie-a", "tie-b", "late"]


async def test_queued_node_classes_are_those_of_queued_jobs_only(store: AsyncJobStore) -> None:
    assert await store.queued_node_classes() == {}
    await add(store, "a", 1)
    await store.add_job("b", 2, PROMPT, {}, "client", ["1"], {"1": "KSampler", "2": "KSampler"})
    await add(store, "running", 3)
    await store.start_job("running", {})
    assert await store.queued_node_classes() == {"a": set(NODES.values()), "b": {"KSampler"}}


async def test_a_job_runs_to_completion_with_ordered_events(store: AsyncJobStore) -> None:
    await add(store, "a", 1)
    first = await store.last_event_id()
    started = await store.start_job("a", {"3": {"images": ["cached.png"]}})
    assert [e.type for e in started] == [EventType.STARTED, EventType.CACHED]
    running = await store.set_node_state("a", "1", NodeState.RUNNING, event=EventType.NODE_RUNNING)
    assert running is not None
    entry = CacheEntry("sig-2", "SaveImage", [{"kind": "image"}], {"images": ["x.png"]})
    done = await store.finish_node("a", "2", {"images": ["x.png"]}, data={"class_type": "SaveImage"}, cache=entry,
                                   completed={"outputs": ["2"]})
    assert [e.type for e in done] == [EventType.NODE_DONE, EventType.COMPLETED]
    events = await store.events_after(first)
    ids = [e.id for e in events]
    assert ids == sorted(ids) and len(set(ids)) == 5 == len(ids) and ids[0] > first
    assert [e.type for e in events] == [EventType.STARTED, EventType.CACHED, EventType.NODE_RUNNING,
                                        EventType.NODE_DONE, EventType.COMPLETED]
    assert await store.last_event_id() == ids[-1]
    job = await store.get_job("a")
    assert job is not None and job.status == JobStatus.COMPLETED and job.started and job.finished
    assert job.finished >= job.started
    assert job.outputs == {"2": {"images": ["x.png"]}, "3": {"images": ["cached.png"]}}
    states = {n["node_id"]: n["state"] for n in await store.node_states("a")}
    assert states == {"1": NodeState.PENDING, "2": NodeState.DONE, "3": NodeState.CACHED}  # finished: not running
    assert await store.cache_get_many(["sig-2", "nope"]) == {"sig-2": ([{"kind": "image"}], {"images": ["x.png"]})}
    assert [e.type for e in await store.events_after(0, "a")][-1] == EventType.COMPLETED


async def test_a_failure_records_its_error_and_running_nodes_read_pending(store: AsyncJobStore) -> None:
    await add(store, "a", 1)
    await store.start_job("a", {})
    await store.set_node_state("a", "1", NodeState.RUNNING)
    error = {"type": "x", "message": "boom"}
    failed = await store.set_status("a", JobStatus.FAILED, error=error, event=EventType.FAILED, data=error)
    assert failed is not None and failed.data == error
    job = await store.get_job("a")
    assert job is not None and job.error == error and job.status == JobStatus.FAILED
    assert {n["state"] for n in await store.node_states("a")} == {NodeState.PENDING}


async def test_listing_orders_filters_and_pages(store: AsyncJobStore) -> None:
    for job_id, number in (("a", 3), ("b", 1), ("c", 2)):
        await add(store, job_id, number)
    await store.set_status("c", JobStatus.CANCELLED)
    queue, total = await store.list_jobs([JobStatus.QUEUED])
    assert [j.id for j in queue] == ["b", "a"] and total == 2
    newest, total = await store.list_jobs(order=JobOrder.NEWEST, limit=2)
    assert [j.id for j in newest] == ["c", "b"] and total == 3
    rest, _ = await store.list_jobs(order=JobOrder.NEWEST, after=(newest[-1].created, "b"))
    assert [j.id for j in rest] == ["a"]
    assert (await store.list_jobs(workflow_id="wf-c"))[0][0].id == "c"
    assert await store.list_jobs(count_only=True) == ([], 3)
    assert await store.count_jobs(JobStatus.QUEUED) == 2
    assert [j.id for j in (await store.list_jobs(offset=1, limit=1))[0]] == ["c"]


async def test_orphaned_running_jobs_are_queued_again(store: AsyncJobStore) -> None:
    await add(store, "a", 1)
    await add(store, "b", 2)
    await store.set_status("a", JobStatus.RUNNING)  # a previous orchestrator died while running it
    events = await store.requeue_orphans()
    assert [(e.job_id, e.type) for e in events] == [("a", EventType.REQUEUED)]
    assert await store.job_status("a") == JobStatus.QUEUED
    assert await store.job_status("b") == JobStatus.QUEUED


async def test_webhooks_not_yet_delivered(store: AsyncJobStore) -> None:
    for job_id in ("a", "b", "c"):
        await store.add_job(job_id, 1, PROMPT, {"webhook_url": "https://x"}, "", ["2"], NODES)
        await store.set_status(job_id, JobStatus.COMPLETED)
    await store.append_event("b", EventType.WEBHOOK_DELIVERED)
    await store.set_status("c", JobStatus.QUEUED)
    assert await store.jobs_awaiting_webhook() == ["a"]


async def test_cache_rows_and_deletes(store: AsyncJobStore) -> None:
    await store.cache_put("old", "A", [], None)
    await store.cache_put("new", "B", [{"v": 1}], {"ui": 1})
    assert [row[0] for row in await store.cache_rows()] == ["old", "new"]
    await store.cache_delete("old")
    assert [row[:2] for row in await store.cache_rows()] == [("new", '[{"v":1}]')]
    await add(store, "a", 1, idempotency=("ann", "k", "d"))
    await add(store, "b", 2)
    assert await store.delete_jobs(["a", "zzz"]) == 1
    assert await store.get_job("a") is None and await store.node_states("a") == []
    assert await store.idempotent_job("ann", "k") is None
    assert await store.get_job("b") is not None


async def test_a_cancel_request_reaches_the_listener_and_the_holders_poll(store: AsyncJobStore) -> None:
    heard: asyncio.Queue[str] = asyncio.Queue()
    await store.listen_cancels(heard.put_nowait)
    await add(store, "run", 1)
    await add(store, "wait", 2)
    assert (await store.claim_next(set())) is not None  # "run": held by this store
    await store.start_job("run", {})
    assert await store.cancels_requested() == set()
    assert not await store.request_cancel("wait") and not await store.request_cancel("missing")  # not running
    assert await store.request_cancel("run")
    assert await asyncio.wait_for(heard.get(), 10) == "run"  # PostgreSQL: NOTIFY on the listener connection
    assert await store.cancels_requested() == {"run"}
    await store.set_status("run", JobStatus.CANCELLED, event=EventType.CANCELLED)
    assert await store.cancels_requested() == set() and heard.empty()  # ended: nothing left to cancel


async def test_a_chore_is_exclusive_and_a_store_of_one_shares_no_secret(store: AsyncJobStore) -> None:
    async with store.exclusive(PeriodicTask.RETENTION) as ours:
        assert ours  # nobody else holds it
    secret = await store.shared_secret("webhook")
    if store.shared:
        assert secret is not None and len(secret) >= 32 and await store.shared_secret("webhook") == secret
    else:
        assert secret is None  # SQLite: the orchestrator keeps it in <home>/webhook_secret


async def test_model_digests_are_kept_per_version(store: AsyncJobStore) -> None:
    where = "s3://bucket/models/checkpoints"
    assert await store.model_digest(where, "a.safetensors", "v1") is None
    await store.record_model_digest(where, "a.safetensors", "v1", 10, "aa" * 32)
    assert await store.model_digest(where, "a.safetensors", "v1") == "aa" * 32
    assert await store.model_digest("file:///other/checkpoints", "a.safetensors", "v1") is None
    await store.record_model_digest(where, "a.safetensors", "v2", 11, "bb" * 32)  # the file changed
    assert await store.model_digest(where, "a.safetensors", "v1") is None  # the old version's row is gone
    assert await store.model_digest(where, "a.safetensors", "v2") == "bb" * 32
