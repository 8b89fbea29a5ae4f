"""Orchestrators sharing one real PostgreSQL 15: store-wide chores (retention, webhook redelivery) run in one
orchestrator at a time under `pg_try_advisory_lock`, all sign webhooks with the one secret kept in the store,
and a job whose cancel was requested ends cancelled, not re-queued, when its holder's lease runs out."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from comfymesh.config import Settings
from comfymesh.contracts.events import EventType, JobStatus
from comfymesh.jobs.postgres.store import CHORE_LOCKS, PostgresJobStore
from comfymesh.jobs.protocol import LeaseLost, PeriodicTask
from comfymesh.orchestrator.replicas import ReplicaPool
from comfymesh.orchestrator.scheduler import Scheduler
from comfymesh.orchestrator.webhooks import DELIVERY_REFUSED
from tests.postgres import PostgresServer, postgres  # noqa: F401 (fixture)

PROMPT = {"1": {"class_type": "EmptyImage", "inputs": {}}}


@pytest.fixture
def url(postgres: PostgresServer) -> str:  # noqa: F811
    return postgres.new_database()


async def sql(url: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


@pytest.fixture
async def two(url: str, tmp_path: Path) -> AsyncIterator[tuple[Scheduler, Scheduler]]:
    """Two recovered schedulers (no stage: nothing here runs a job), one home, one database."""
    schedulers = []
    for owner in ("orch-a", "orch-b"):
        settings = Settings(home=tmp_path, database=url, webhook_secret="", temp_max_age_s=60.0)
        scheduler = Scheduler(settings, await PostgresJobStore.open(url, owner=owner), ReplicaPool({}))
        await scheduler.recover()
        assert scheduler._redelivery is not None and await scheduler._redelivery  # nothing to redeliver yet
        schedulers.append(scheduler)
    try:
        yield schedulers[0], schedulers[1]
    finally:
        for scheduler in schedulers:
            if scheduler.bus._pump is not None:
                scheduler.bus._pump.cancel()
            await scheduler.store.close()


async def test_a_chore_lock_is_held_by_one_store_at_a_time(url: str) -> None:
    a = await PostgresJobStore.open(url, owner="orch-a")
    b = await PostgresJobStore.open(url, owner="orch-b")
    try:
        async with a.exclusive(PeriodicTask.RETENTION) as a_retains, \
                b.exclusive(PeriodicTask.RETENTION) as b_retains, \
                b.exclusive(PeriodicTask.WEBHOOK_REDELIVERY) as b_redelivers:
            assert (a_retains, b_retains, b_redelivers) == (True, False, True)  # one lock per chore
        async with b.exclusive(PeriodicTask.RETENTION) as b_retains:
            assert b_retains  # let go at the end of a's block
        # a dies mid-chore (its session killed): the lock goes with the session, and a's chore fails
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            async with a.exclusive(PeriodicTask.RETENTION) as a_retains:
                [holder] = await sql(url, "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid::bigint = $1",
                                     CHORE_LOCKS[PeriodicTask.RETENTION])
                await sql(url, "SELECT pg_terminate_backend($1, 10000)", holder["pid"])  # waits for its exit
                async with b.exclusive(PeriodicTask.RETENTION) as b_retains:
                    assert a_retains and b_retains
    finally:
        await a.close()
        await b.close()


async def test_a_retention_pass_is_skipped_while_another_orchestrator_runs_one(
        two: tuple[Scheduler, Scheduler], tmp_path: Path) -> None:
    a, b = two
    old = tmp_path / "temp" / "old.png"
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_bytes(b"x")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    async with a.store.exclusive(PeriodicTask.RETENTION):  # what a's own pass holds while it runs
        assert await b.retention_pass() is False
        assert old.exists()
    assert await b.retention_pass() is True
    assert not old.exists()


async def test_webhook_redelivery_is_skipped_while_another_orchestrator_redelivers(
        two: tuple[Scheduler, Scheduler]) -> None:
    a, b = two
    # a finished job whose webhook a crash cut short (refused at delivery: loopback is not allowed out)
    await a.store.add_job("hooked", 1, PROMPT, {"comfymesh": {"webhook_url": "http://localhost:9/hook"}}, "", ["1"],
                          {"1": "EmptyImage"})
    await a.store.set_status("hooked", JobStatus.COMPLETED, event=EventType.COMPLETED)
    async with a.store.exclusive(PeriodicTask.WEBHOOK_REDELIVERY):
        assert await b.redeliver_webhooks() is False
        assert await b.store.jobs_awaiting_webhook() == ["hooked"]
    assert await b.redeliver_webhooks() is True  # returns once the delivery is recorded
    events = [(e.type, e.data) for e in await b.store.events_after(0, "hooked") if e.type.startswith("webhook_")]
    assert events == [(EventType.WEBHOOK_FAILED, {"error": DELIVERY_REFUSED})]
    assert await a.redeliver_webhooks() is True and await a.store.jobs_awaiting_webhook() == []


async def test_orchestrators_sharing_a_store_sign_with_one_secret(two: tuple[Scheduler, Scheduler], url: str,
                                                                  tmp_path: Path) -> None:
    a, b = two
    [row] = await sql(url, "SELECT value FROM secrets WHERE name = 'webhook'")
    assert a.webhooks.secret == b.webhooks.secret == row["value"].encode()
    assert not (tmp_path / "webhook_secret").exists()  # the SQLite store's file is not used
    stores = await asyncio.gather(*(PostgresJobStore.open(url) for _ in range(4)))
    try:  # asked at once, from a fresh database's first secret on: one value
        assert len({await store.shared_secret("other") for store in stores}) == 1
        raced = await asyncio.gather(*(store.shared_secret("raced") for store in stores))
        assert len(set(raced)) == 1 and raced[0] is not None
    finally:
        await asyncio.gather(*(store.close() for store in stores))


async def test_an_expired_lease_of_a_job_whose_cancel_was_asked_ends_cancelled(url: str) -> None:
    a = await PostgresJobStore.open(url, owner="orch-a")
    b = await PostgresJobStore.open(url, owner="orch-b")
    try:
        await a.add_job("x", 1, PROMPT, {}, "", ["1"], {"1": "EmptyImage"})
        await a.claim_next(set())
        await a.start_job("x", {})
        assert await b.request_cancel("x")
        # a hangs before it reads the request: its lease runs out
        await sql(url, "UPDATE jobs SET lease_until = clock_timestamp() - interval '1 second' WHERE id = 'x'")
        ended = await b.requeue_expired()
        assert [(e.job_id, e.type, e.data) for e in ended] == [("x", EventType.CANCELLED, {"while": "running"})]
        job = await b.get_job("x")
        assert job is not None and job.status == JobStatus.CANCELLED and job.finished
        assert await b.claim_next(set()) is None  # never run again
        with pytest.raises(LeaseLost):
            await a.set_status("x", JobStatus.COMPLETED, event=EventType.COMPLETED)
    finally:
        await a.close()
        await b.close()
