"""A job that cannot be prepared fails alone: the dispatcher goes on to the next job, and is restarted if it
ever dies. A real scheduler over a real SQLite store, with no stage configured (jobs that reach a stage fail
with `stage_unavailable`, which shows they were taken up)."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from comfymesh.config import Settings
from comfymesh.jobs import JobStore
from comfymesh.jobs.options import InvalidJobOptions, JobOptions, requested_options
from comfymesh.jobs.sqlite_backend import SqliteJobStore
from comfymesh.orchestrator.replicas import ReplicaPool
from comfymesh.orchestrator.scheduler import Scheduler, supervise
from tests.mesh import SHARED

PROMPT = {"1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
          "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
          "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "poison"}}}
NODES = {"1": "LoadImage", "2": "ImageInvert", "3": "SaveImage"}


async def wait_until_finished(store: JobStore, job_id: str, timeout: float = 20) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while (job := store.get_job(job_id)) is None or job.status in ("queued", "running"):
        assert asyncio.get_running_loop().time() < deadline, f"job {job_id} is still {job and job.status}"
        await asyncio.sleep(0.02)
    return job


async def test_a_job_that_cannot_be_prepared_fails_alone_and_the_next_one_runs(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "input").mkdir()
    shutil.copy(SHARED / "data" / "coffee.png", tmp_path / "input" / "example.png")
    settings = Settings(home=tmp_path, max_running_jobs=1)
    store = JobStore(settings.database_path)
    # rows as an older version stored them: options no client should have been able to set
    poisons = [{"timeout_s": -1}, {"timeout_s": "soon"}, {"webhook_url": 5}, "not an object"]
    for index, options in enumerate(poisons):
        store.add_job(f"poison{index}", index, PROMPT, {"comfymesh": options}, "", ["3"], NODES)
    store.add_job("normal", len(poisons), PROMPT, {}, "", ["3"], NODES)
    scheduler = Scheduler(settings, SqliteJobStore.over(store), ReplicaPool({}))
    dispatcher = asyncio.create_task(scheduler.run_forever())
    try:
        with caplog.at_level(logging.ERROR, logger="comfymesh.orchestrator"):
            failed = [await wait_until_finished(store, f"poison{i}") for i in range(len(poisons))]
            normal = await wait_until_finished(store, "normal")
        assert not dispatcher.done() and scheduler.running == {}
        last_events = [store.events_after(0, job.id)[-1] for job in failed]
    finally:
        dispatcher.cancel()
        await asyncio.gather(dispatcher, return_exceptions=True)
        store.close()
    for job in failed:
        assert job.status == "failed" and job.error["type"] == "invalid_options"
        assert "submit it again" in job.error["message"]
    assert [(event.type, event.data["type"]) for event in last_events] == [("failed", "invalid_options")] * len(poisons)
    assert sum("could not be prepared" in record.getMessage() for record in caplog.records) == len(poisons)
    # taken up after them: no stage is configured here, so it fails there, not in the queue
    assert normal.status == "failed" and normal.error["type"] == "stage_unavailable"


async def test_a_dispatcher_that_dies_is_logged_and_started_again(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []
    running_again = asyncio.Event()

    async def dispatcher() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise RuntimeError("a bug in the dispatch loop")
        running_again.set()
        await asyncio.Event().wait()

    with caplog.at_level(logging.ERROR, logger="comfymesh.orchestrator"):
        task = asyncio.create_task(supervise("dispatcher", dispatcher))
        await asyncio.wait_for(running_again.wait(), timeout=5)
    assert not task.done() and runs == [0, 1]
    assert any("dispatcher died" in record.getMessage() and record.exc_info for record in caplog.records)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("options", [{"timeout_s": -1}, {"timeout_s": 0.0 - 1e-9}, {"timeout_s": 8 * 24 * 3600},
                                     {"timeout_s": float("nan")}, {"timeout_s": float("inf")}, {"timeout_s": "60"},
                                     {"timeout_s": True}, {"webhook_url": "file:///etc/passwd"},
                                     {"webhook_url": ["http://x"]}, {"user": "admin"}, {"priority": 1},
                                     "60", ["timeout_s"]])
def test_a_client_may_set_only_documented_options_in_their_ranges(options: Any) -> None:
    with pytest.raises(InvalidJobOptions):
        requested_options(options)


def test_options_that_may_be_set() -> None:
    assert requested_options({"timeout_s": 60, "webhook_url": "https://hooks.example.com/x"}) == \
        {"timeout_s": 60, "webhook_url": "https://hooks.example.com/x"}
    assert requested_options(None) == {}
    for bad in ({"priority": float("inf")}, {"job_id": "x" * 129}, {"job_id": "a\nb"}, {"user": "\x1b[31m"}):
        with pytest.raises(InvalidJobOptions):
            JobOptions(**bad)


async def test_a_job_whose_row_cannot_be_read_fails_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(home=tmp_path, max_running_jobs=1)
    store = JobStore(settings.database_path)
    store.add_job("damaged", 0, PROMPT, {}, "", ["3"], NODES)
    store.add_job("normal", 1, PROMPT, {}, "", ["3"], NODES)
    store._db.execute("UPDATE jobs SET prompt_json = '{\"1\": {trunc' WHERE id = 'damaged'")
    store._db.commit()
    scheduler = Scheduler(settings, SqliteJobStore.over(store), ReplicaPool({}))
    dispatcher = asyncio.create_task(scheduler.run_forever())
    try:
        with caplog.at_level(logging.ERROR, logger="comfymesh.orchestrator"):
            normal = await wait_until_finished(store, "normal")
        assert not dispatcher.done()
        row = store._db.execute("SELECT status, error_json FROM jobs WHERE id = 'damaged'").fetchone()
    finally:
        dispatcher.cancel()
        await asyncio.gather(dispatcher, return_exceptions=True)
        store.close()
    assert row["status"] == "failed" and "unreadable_job" in row["error_json"]
    assert any("could not be read" in record.getMessage() for record in caplog.records)
    assert normal.status == "failed" and normal.error["type"] == "stage_unavailable"  # taken up after it
