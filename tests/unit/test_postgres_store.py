"""The PostgreSQL job store beyond the shared contract, on a real PostgreSQL 15: leases and fenced writes,
migrations, refusals at start-up, and the two acceptance checks of issue 18 (claims exactly once across three
orchestrator processes; 8 writers in 2 processes x 300 events followed without a gap)."""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from comfymesh.contracts.events import EventType, JobStatus, NodeState
from comfymesh.jobs.backends import UnknownDatabaseSchemeError, database_scheme
from comfymesh.jobs.postgres.migrations import SchemaTooNewError, migrations
from comfymesh.jobs.postgres.store import DatabaseUnreachableError, PostgresJobStore
from comfymesh.jobs.protocol import LeaseLost
from tests import pg_workers
from tests.mesh import free_port
from tests.postgres import PostgresServer, postgres  # noqa: F401 (fixture)

PROMPT = {"1": {"class_type": "EmptyImage", "inputs": {}}}


@pytest.fixture
def url(postgres: PostgresServer) -> str:  # noqa: F811
    return postgres.new_database()


@pytest.fixture
async def two(url: str) -> AsyncIterator[tuple[PostgresJobStore, PostgresJobStore]]:
    a = await PostgresJobStore.open(url, owner="orch-a", lease_ttl_s=15)
    b = await PostgresJobStore.open(url, owner="orch-b", lease_ttl_s=15)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def add(store: PostgresJobStore, job_id: str, number: float = 1) -> None:
    await store.add_job(job_id, number, PROMPT, {}, "", ["1"], {"1": "EmptyImage"})


async def sql(url: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def test_a_claimed_job_is_nobody_elses(two: tuple[PostgresJobStore, PostgresJobStore], url: str) -> None:
    a, b = two
    await add(a, "x")
    job = await a.claim_next(set())
    assert job is not None and job.id == "x"
    assert await b.claim_next(set()) is None
    [row] = await sql(url, "SELECT owner, epoch, lease_until > clock_timestamp() AS live FROM jobs WHERE id = 'x'")
    assert (row["owner"], row["epoch"], row["live"]) == ("orch-a", 1, True)


async def test_an_expired_lease_is_requeued_by_another_and_the_old_holder_is_fenced_out(
        two: tuple[PostgresJobStore, PostgresJobStore], url: str) -> None:
    a, b = two
    await add(a, "x")
    assert (await a.claim_next(set())) is not None
    await a.start_job("x", {})
    await a.set_node_state("x", "1", NodeState.RUNNING)
    assert await a.renew_leases() == set()
    await sql(url, "UPDATE jobs SET lease_until = clock_timestamp() - interval '1 second' WHERE id = 'x'")  # a hung
    requeued = await b.requeue_expired()
    assert [(e.job_id, e.type) for e in requeued] == [("x", EventType.REQUEUED)]
    assert await b.job_status("x") == JobStatus.QUEUED
    assert {n["state"] for n in await b.node_states("x")} == {NodeState.PENDING}
    assert await a.renew_leases() == {"x"}  # a learns it lost the job (and cancels its stage calls)
    events_before = await a.last_event_id()
    for write in (a.set_status("x", JobStatus.COMPLETED, event=EventType.COMPLETED),
                  a.finish_node("x", "1", {"images": []}, data={}, completed={}),
                  a.append_event("x", EventType.NODE_PROGRESS)):
        with pytest.raises(LeaseLost):
            await write
    assert await a.last_event_id() == events_before  # 0 fenced writes accepted
    again = await b.claim_next(set())
    assert again is not None and again.id == "x"
    await b.start_job("x", {})
    with pytest.raises(LeaseLost):
        await a.set_status("x", JobStatus.FAILED)
    assert await b.job_status("x") == JobStatus.RUNNING
    [row] = await sql(url, "SELECT owner, epoch FROM jobs WHERE id = 'x'")
    assert (row["owner"], row["epoch"]) == ("orch-b", 3)  # claimed, re-queued, claimed


async def test_renewal_moves_the_lease_forward(two: tuple[PostgresJobStore, PostgresJobStore], url: str) -> None:
    a, _ = two
    await add(a, "x")
    await a.claim_next(set())
    await sql(url, "UPDATE jobs SET lease_until = clock_timestamp() + interval '1 second'")
    assert await a.renew_leases() == set()
    [row] = await sql(url, "SELECT EXTRACT(EPOCH FROM lease_until - clock_timestamp()) AS left FROM jobs")
    assert 14 < float(row["left"]) <= 15


async def test_a_job_claimed_again_during_a_renewal_is_not_reported_lost(
        two: tuple[PostgresJobStore, PostgresJobStore], url: str) -> None:
    """The renewal reads the held epochs, then updates: a job whose lease expired, was re-queued and claimed again
    by the same orchestrator in between holds a newer epoch, and its new run must not be stopped (the chaos test
    saw such jobs end cancelled)."""
    a, b = two
    await add(a, "x")
    await a.claim_next(set())
    await a.start_job("x", {})
    pool: Any = a._pool

    class Interleaved:  # runs the other orchestrators' steps between the renewal's read and its update
        def __getattr__(self, name: str) -> Any:
            return getattr(pool, name)

        async def fetch(self, *args: Any) -> Any:
            a._pool = pool
            await sql(url, "UPDATE jobs SET lease_until = clock_timestamp() - interval '1 second'")
            assert [e.job_id for e in await b.requeue_expired()] == ["x"]
            await a.release("x")  # its first run ended on the lost lease
            claimed = await a.claim_next(set())
            assert claimed is not None and claimed.id == "x"
            return await pool.fetch(*args)

    a._pool = Interleaved()
    assert await a.renew_leases() == set()
    [row] = await sql(url, "SELECT owner, epoch FROM jobs WHERE id = 'x'")
    assert (row["owner"], row["epoch"]) == ("orch-a", 3)  # claimed, re-queued, claimed again


async def test_sigterm_hands_leases_back(two: tuple[PostgresJobStore, PostgresJobStore], url: str) -> None:
    a, b = two
    for job_id in ("run", "wait"):
        await add(a, job_id)
    await a.claim_next(set())
    await a.claim_next(set())
    await a.start_job("run", {})
    handed = await a.hand_back()
    assert [(e.job_id, e.type) for e in handed] == [("run", EventType.REQUEUED)]
    rows = await sql(url, "SELECT id, status, owner FROM jobs ORDER BY id")
    assert [tuple(row) for row in rows] == [("run", "queued", None), ("wait", "queued", None)]
    taken = {(await b.claim_next(set())).id, (await b.claim_next(set())).id}  # type: ignore[union-attr]
    assert taken == {"run", "wait"}
    with pytest.raises(LeaseLost):
        await a.start_job("run", {})


async def test_a_finished_job_releases_its_lease(two: tuple[PostgresJobStore, PostgresJobStore], url: str) -> None:
    a, _ = two
    await add(a, "x")
    await a.claim_next(set())
    await a.set_status("x", JobStatus.COMPLETED, event=EventType.COMPLETED)
    await a.release("x")
    assert [tuple(r) for r in await sql(url, "SELECT owner, lease_until FROM jobs")] == [(None, None)]
    assert await a.renew_leases() == set()


async def test_numbers_come_from_one_sequence(two: tuple[PostgresJobStore, PostgresJobStore]) -> None:
    a, b = two
    numbers = [await a.next_number(), await b.next_number(), await a.next_number()]
    assert numbers == [numbers[0], numbers[0] + 1, numbers[0] + 2]


async def test_migrations_run_once_and_a_newer_schema_is_refused(url: str) -> None:
    stores = await asyncio.gather(*(PostgresJobStore.open(url) for _ in range(3)))
    for store in stores:
        await store.close()
    versions = [row["version"] for row in await sql(url, "SELECT version FROM comfymesh_schema ORDER BY version")]
    assert versions == list(range(1, len(migrations()) + 1))
    await sql(url, "INSERT INTO comfymesh_schema VALUES (999, 0)")
    with pytest.raises(SchemaTooNewError, match="version 999"):
        await PostgresJobStore.open(url)


async def test_an_unreachable_server_is_named_without_its_password() -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(DatabaseUnreachableError) as refused:
        await PostgresJobStore.open(f"postgresql://ann:s3cret-pw@127.0.0.1:{port}/jobs")
    assert time.monotonic() - started < 10
    assert f"127.0.0.1:{port}" in str(refused.value) and "s3cret-pw" not in str(refused.value)


def test_an_unknown_scheme_lists_the_accepted_ones() -> None:
    with pytest.raises(UnknownDatabaseSchemeError) as refused:
        database_scheme("mysql://ann:s3cret-pw@db/jobs")
    message = str(refused.value)
    assert "'mysql'" in message and "postgresql://" in message and "SQLite" in message and "s3cret" not in message
    assert database_scheme("/var/jobs.db") == database_scheme("sqlite:///var/jobs.db") == "sqlite"
    assert database_scheme("postgres://h/db") == "postgresql"


async def test_400_jobs_3_orchestrators_each_claimed_exactly_once(url: str) -> None:
    store = await PostgresJobStore.open(url)
    try:
        for index in range(400):
            await add(store, f"job-{index:03}", index % 7)
        with ProcessPoolExecutor(3, mp_context=multiprocessing.get_context("spawn")) as pool:
            takes = list(pool.map(pg_workers.claim_all, [url] * 3, ["o1", "o2", "o3"]))
        claimed = [job_id for take in takes for job_id in take]
        assert len(claimed) == 400 and set(claimed) == {f"job-{index:03}" for index in range(400)}
        starts = await sql(url, "SELECT job_id, COUNT(*) AS n FROM events WHERE type = 'started' GROUP BY job_id")
        assert len(starts) == 400 and {row["n"] for row in starts} == {1}
        assert await store.count_jobs(JobStatus.COMPLETED) == 400
    finally:
        await store.close()


async def test_8_writers_x_300_events_on_2_orchestrators_reach_a_follower_in_id_order(url: str) -> None:
    """Issue 18's acceptance 2: 8 writers (4 in each of 2 processes) x 300 events; a follower reading
    `id > last` on every NOTIFY gets 2400/2400 in strictly increasing order (without the append lock it
    skipped 121 in a probe)."""
    follower = await PostgresJobStore.open(url)
    woken = asyncio.Event()
    await follower.listen(lambda _event_id: woken.set())
    seen: list[int] = []
    try:
        loop = asyncio.get_running_loop()
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
            writing = asyncio.gather(*(loop.run_in_executor(pool, pg_workers.write_events, url, 4, 300, tag)
                                       for tag in ("p1", "p2")))
            while True:  # as a StreamStatus follower: read past the last id seen whenever NOTIFY wakes it
                done = writing.done()
                woken.clear()
                while batch := await follower.events_after(seen[-1] if seen else 0):
                    seen += [event.id for event in batch]
                if done:
                    break
                wake = asyncio.ensure_future(woken.wait())
                pending: list[asyncio.Future[Any]] = [wake, writing]
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                wake.cancel()
            assert await writing == [1200, 1200]
    finally:
        await follower.close()
    assert all(later > earlier for earlier, later in itertools.pairwise(seen))
    assert len(seen) == 2400
    assert seen == [row["id"] for row in await sql(url, "SELECT id FROM events ORDER BY id")]


def test_the_orchestrator_exits_within_10_s_when_postgresql_is_unreachable(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "COMFYMESH_HOME": str(tmp_path), "COMFYMESH_DATABASE":
           f"postgresql://ann:s3cret-pw@127.0.0.1:{port}/jobs"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "comfymesh.orchestrator", "--listen", f"127.0.0.1:{free_port()}"],
                          env=env, capture_output=True, text=True, timeout=30)
    assert time.monotonic() - started < 10
    assert done.returncode != 0
    assert f"127.0.0.1:{port}" in done.stderr and "s3cret-pw" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
