"""Job listings are filtered, ordered and paged by the store (the gateway never pages in memory)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfymesh.contracts.events import JobStatus
from comfymesh.contracts.job_order import JobOrder
from comfymesh.jobs import JobRecord, JobStore


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[JobStore]:
    """Jobs a..e submitted a second apart; b, c and d ran 5, 1 and 3 seconds; e waits; a was cancelled queued."""
    clock = iter(range(1000, 2000))
    monkeypatch.setattr(time, "time", lambda: float(next(clock)))
    jobs = JobStore(tmp_path / "jobs.db")
    for job_id in "abcde":
        extra = {"extra_pnginfo": {"workflow": {"id": "wf-1" if job_id in "bd" else "wf-2"}}}
        jobs.add_job(job_id, 0, {}, extra, "", [], {})
    jobs.set_status("a", JobStatus.CANCELLED)
    for job_id, seconds in (("b", 5), ("c", 1), ("d", 3)):
        jobs.start_job(job_id, {})
        for _ in range(seconds - 1):
            next(clock)
        jobs.set_status(job_id, JobStatus.COMPLETED)
    yield jobs
    jobs.close()


def ids(listing: tuple[list[JobRecord], int]) -> tuple[list[str], int]:
    jobs, total = listing
    return [job.id for job in jobs], total


def test_pages_count_every_match(store: JobStore) -> None:
    assert ids(store.list_jobs(order=JobOrder.NEWEST, limit=2)) == (["e", "d"], 5)
    assert ids(store.list_jobs(order=JobOrder.NEWEST, limit=2, offset=2)) == (["c", "b"], 5)
    assert ids(store.list_jobs(order=JobOrder.OLDEST, offset=3)) == (["d", "e"], 5)
    assert ids(store.list_jobs([JobStatus.COMPLETED], order=JobOrder.OLDEST)) == (["b", "c", "d"], 3)
    assert store.list_jobs([JobStatus.COMPLETED], count_only=True) == ([], 3)


def test_orders_by_execution_time(store: JobStore) -> None:
    finished = [JobStatus.COMPLETED]
    assert ids(store.list_jobs(finished, order=JobOrder.LONGEST)) == (["b", "d", "c"], 3)
    assert ids(store.list_jobs(finished, order=JobOrder.SHORTEST)) == (["c", "d", "b"], 3)
    # jobs that never ran count as taking no time, newest first among themselves
    assert ids(store.list_jobs(order=JobOrder.SHORTEST, limit=2)) == (["e", "a"], 5)


def test_filters_by_workflow(store: JobStore) -> None:
    assert ids(store.list_jobs(order=JobOrder.OLDEST, workflow_id="wf-1")) == (["b", "d"], 2)
    assert ids(store.list_jobs(workflow_id="none")) == ([], 0)


def test_a_page_past_a_job_is_not_moved_by_arrivals_or_departures(store: JobStore) -> None:
    newest = [job.id for job in store.list_jobs(order=JobOrder.NEWEST)[0]]
    first, total = store.list_jobs(order=JobOrder.NEWEST, limit=2)
    anchor = (first[-1].created, first[-1].id)
    store.add_job("arrived", 0, {}, {}, "", [], {})  # newer than every page: it must not shift them
    store.delete_jobs([newest[0]])
    rest, after_total = store.list_jobs(order=JobOrder.NEWEST, after=anchor)
    assert [job.id for job in rest] == newest[2:] and after_total == total == 5  # one came, one went
    store.delete_jobs([first[-1].id])  # the anchor itself gone: its time still places the page
    assert [job.id for job in store.list_jobs(order=JobOrder.NEWEST, after=anchor)[0]] == newest[2:]
