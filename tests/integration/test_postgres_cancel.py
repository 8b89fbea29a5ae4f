"""Two orchestrators (in-process schedulers, each with its own PostgresJobStore) sharing one real PostgreSQL 15
and one real imaging stage: a cancel that reaches the orchestrator that does not run the job cancels it where
it runs, by NOTIFY, or by the lease keeper's read of the flag when the notification is missed."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from comfymesh.cli.supervisor import ServiceSpec, Supervisor
from comfymesh.config import Settings
from comfymesh.contracts.events import FINISHED_STATUSES, EventType, JobStatus
from comfymesh.jobs.options import JobOptions
from comfymesh.jobs.postgres.store import PostgresJobStore
from comfymesh.orchestrator.replicas import ReplicaPool
from comfymesh.orchestrator.scheduler import Scheduler
from tests.mesh import SHARED, free_port
from tests.postgres import PostgresServer, postgres  # noqa: F401 (fixture)

HANGING = {"1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},  # ImageBlur hangs until cancelled
           "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}},
           "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "pg_cancel"}}}


@dataclass
class Stage:
    home: Path
    address: str
    hung: threading.Event  # set when the stage logs that a node hangs


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    home = tmp_path_factory.mktemp("pg_cancel")
    (home / "input").mkdir()
    shutil.copy(SHARED / "data" / "coffee.png", home / "input" / "example.png")
    address = f"127.0.0.1:{free_port()}"
    hung = threading.Event()
    logs: list[str] = []

    def echo(_name: str, line: str) -> None:
        logs.append(line)
        if "hangs until cancelled" in line:
            hung.set()

    env = {**os.environ, "COMFYMESH_HOME": str(home), "COMFYMESH_TEST_HANG_NODES": "ImageBlur",
           "COMFYMESH_LOG_JSON": "true"}
    supervisor = Supervisor([ServiceSpec("imaging", ["comfymesh.imaging", "--listen", address])], env, echo)
    try:
        supervisor.start_all(timeout=120)
        yield Stage(home, address, hung)
    finally:
        supervisor.stop(grace=5)


@dataclass
class Orchestrator:
    scheduler: Scheduler
    store: PostgresJobStore
    tasks: list[asyncio.Task[None]]


async def orchestrator(stage: Stage, url: str, owner: str, *, lease_ttl_s: float = 15.0,
                       dispatch: bool = True) -> Orchestrator:
    settings = Settings(home=stage.home, database=url, imaging_replicas=stage.address, diffusion_replicas="",
                        lease_ttl_s=lease_ttl_s)
    store = await PostgresJobStore.open(url, owner=owner, lease_ttl_s=lease_ttl_s)
    scheduler = Scheduler(settings, store, ReplicaPool({"imaging": [stage.address]}))
    await scheduler.recover()
    tasks = [asyncio.create_task(scheduler.run_forever())] if dispatch else []
    return Orchestrator(scheduler, store, tasks)


async def stop(orch: Orchestrator) -> None:
    scheduler = orch.scheduler
    background = [scheduler._gc, scheduler._leases, scheduler._redelivery, scheduler.bus._pump]
    tasks = orch.tasks + [task for task in background if task is not None]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await orch.store.close()


@pytest.fixture
async def pair(stage: Stage, postgres: PostgresServer,  # noqa: F811
               request: pytest.FixtureRequest) -> AsyncIterator[tuple[Orchestrator, Orchestrator, str]]:
    """A runs the jobs, its lease keeper reading every TTL/3 (the test's parameter: TTL); B only answers the
    API here, so it never claims them."""
    url = postgres.new_database()
    stage.hung.clear()
    a = await orchestrator(stage, url, "orch-a", lease_ttl_s=request.param)
    b = await orchestrator(stage, url, "orch-b", dispatch=False)
    try:
        yield a, b, url
    finally:
        await stop(a)
        await stop(b)


async def hanging_job_on(a: Orchestrator, stage: Stage) -> str:
    submission = await a.scheduler.submit(HANGING, {}, JobOptions())
    assert submission.job_id and submission.error is None, submission.error
    assert await asyncio.to_thread(stage.hung.wait, 60), "the hanging node never ran"
    assert set(a.scheduler.running) == {submission.job_id}
    assert sum(replica.in_flight for replica in a.scheduler.pool.all()) == 1  # its stage call is under way
    return submission.job_id


async def finished(store: PostgresJobStore, job_id: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while (status := await store.job_status(job_id)) not in FINISHED_STATUSES:
        assert time.monotonic() < deadline, f"job {job_id} is still {status}"
        await asyncio.sleep(0.02)
    return str(status)


async def assert_cancelled_where_it_ran(a: Orchestrator, job_id: str) -> None:
    assert await finished(a.store, job_id) == JobStatus.CANCELLED
    events = await a.store.events_after(0, job_id)
    cancelled = [event for event in events if event.type == EventType.CANCELLED]
    assert [event.data for event in cancelled] == [{"while": JobStatus.RUNNING}]  # as a local cancel records it
    assert events[-1].type == EventType.CANCELLED
    deadline = time.monotonic() + 10
    while a.scheduler.running or sum(replica.in_flight for replica in a.scheduler.pool.all()):
        assert time.monotonic() < deadline, "A's stage call was not cancelled"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("pair", [15.0], indirect=True)  # A's lease keeper reads every 5 s: only NOTIFY is fast
async def test_a_cancel_sent_to_b_cancels_the_job_a_runs(pair: tuple[Orchestrator, Orchestrator, str],
                                                         stage: Stage) -> None:
    a, b, _ = pair
    job_id = await hanging_job_on(a, stage)
    assert job_id not in b.scheduler.running
    started = time.monotonic()
    assert await b.scheduler.cancel(job_id) == [job_id]
    await assert_cancelled_where_it_ran(a, job_id)
    assert time.monotonic() - started < 2.5  # by NOTIFY: the lease keeper reads next in 5 s
    assert await b.scheduler.cancel(job_id) == []  # finished: nothing left to cancel


@pytest.mark.parametrize("pair", [1.5], indirect=True)
async def test_a_missed_notification_still_cancels_within_a_lease_keeper_cycle(
        pair: tuple[Orchestrator, Orchestrator, str], stage: Stage) -> None:
    a, _, url = pair
    job_id = await hanging_job_on(a, stage)
    conn = await asyncpg.connect(url)
    try:  # the flag alone, without its NOTIFY (as if A's listener connection had dropped it)
        await conn.execute("UPDATE jobs SET cancel_requested = TRUE WHERE id = $1", job_id)
    finally:
        await conn.close()
    started = time.monotonic()
    await assert_cancelled_where_it_ran(a, job_id)
    assert time.monotonic() - started < 1.5  # TTL/3 = 0.5 s, with room for a loaded machine
