"""The event bus: a job's stream never loses events written between its replay and its live phase."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from comfymesh.contracts.events import JobStatus
from comfymesh.jobs import JobStore
from comfymesh.jobs.sqlite_backend import SqliteJobStore
from comfymesh.orchestrator.events import EventBus


def test_job_finishing_between_replay_and_follow_still_streams_its_last_events(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    store.add_job("j", 1, {}, {}, "", ["1"], {"1": "X"})
    store.set_status("j", JobStatus.RUNNING, event="started")
    replay = store.events_after
    calls = 0

    def racing_events_after(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        events = replay(*args, **kwargs)
        if calls == 1:  # the job finishes right after the replay read the log
            store.append_event("j", "cached", data={"nodes": ["1"]})
            store.set_status("j", JobStatus.COMPLETED, event="completed")
        return events

    store.events_after = racing_events_after  # type: ignore[method-assign]

    async def collect() -> list[str]:
        return [event.type async for event in EventBus(SqliteJobStore.over(store)).stream("j", 0, follow=True)]

    assert asyncio.run(asyncio.wait_for(collect(), 5)) == ["queued", "started", "cached", "completed"]
