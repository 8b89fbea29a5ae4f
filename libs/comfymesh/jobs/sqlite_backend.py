"""The SQLite backend of the async `JobStore` protocol: the synchronous `JobStore`, one orchestrator.

Writes and single-row lookups stay on the event loop (a WAL commit of tens of microseconds costs less than a
thread hop); reads that may return many rows go to a worker thread. One orchestrator owns the file, so there
are no leases: a claim is the next queued job, and a restart re-queues every running job.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from comfymesh.contracts.events import EventType, JobEvent, JobStatus
from comfymesh.contracts.job_order import JobOrder
from comfymesh.jobs.protocol import CachedOutputs, JobExists, PeriodicTask
from comfymesh.jobs.store import CacheEntry, JobRecord, JobStore


class SqliteJobStore:
    shared = False

    def __init__(self, path: Path) -> None:
        """Open (or create) the file; raises DamagedDatabaseError when it fails SQLite's check."""
        self.sync = JobStore(path)
        self._counter: int | None = None
        self._cancels: set[str] = set()
        self._on_cancel: Callable[[str], None] | None = None

    @classmethod
    def over(cls, sync: JobStore) -> SqliteJobStore:
        """The async face of a store already open (tests that also write rows directly)."""
        store = cls.__new__(cls)
        store.sync = sync
        store._counter = None
        store._cancels = set()
        store._on_cancel = None
        return store

    async def close(self) -> None:
        self.sync.close()

    async def listen(self, callback: Callable[[int], None]) -> None:
        return None  # this process writes every event, and its bus publishes them

    async def relay_transient(self, event: JobEvent) -> None:
        return None  # one orchestrator: its bus already published the event to every subscriber

    async def listen_transient(self, callback: Callable[[JobEvent], None]) -> None:
        return None

    # one orchestrator runs every job of the file: a cancel request is delivered in this process
    async def listen_cancels(self, callback: Callable[[str], None]) -> None:
        self._on_cancel = callback

    async def request_cancel(self, job_id: str) -> bool:
        if self.sync.job_status(job_id) != JobStatus.RUNNING:
            return False
        self._cancels.add(job_id)
        if self._on_cancel is not None:
            self._on_cancel(job_id)
        return True

    async def cancels_requested(self) -> set[str]:
        self._cancels = {job_id for job_id in self._cancels if self.sync.job_status(job_id) == JobStatus.RUNNING}
        return set(self._cancels)

    @asynccontextmanager
    async def exclusive(self, task: PeriodicTask) -> AsyncIterator[bool]:
        yield True  # nobody else does the store's chores

    async def shared_secret(self, name: str) -> str | None:
        return None  # the orchestrator keeps its secrets in files under COMFYMESH_HOME

    async def next_number(self) -> int:
        if self._counter is None:
            self._counter = int(self.sync.highest_number())
        self._counter += 1
        return self._counter

    async def add_job(self, job_id: str, number: float, prompt: dict[str, Any], extra_data: dict[str, Any],
                      client_id: str, outputs_to_run: list[str], nodes: dict[str, str],
                      submitted: dict[str, Any] | None = None,
                      idempotency: tuple[str, str, str] | None = None) -> JobEvent:
        try:
            return self.sync.add_job(job_id, number, prompt, extra_data, client_id, outputs_to_run, nodes,
                                     submitted=submitted, idempotency=idempotency)
        except sqlite3.IntegrityError:  # the id or the idempotency key was taken first
            made = self.sync.idempotent_job(*idempotency[:2]) if idempotency else None
            raise JobExists(made[0] if made else job_id) from None

    async def get_job(self, job_id: str) -> JobRecord | None:
        return self.sync.get_job(job_id)

    async def idempotent_job(self, user: str, key: str) -> tuple[str, str] | None:
        return self.sync.idempotent_job(user, key)

    async def job_status(self, job_id: str) -> str | None:
        return self.sync.job_status(job_id)

    async def list_jobs(self, statuses: list[str] | None = None, limit: int = 0, offset: int = 0,
                        order: JobOrder = JobOrder.QUEUE, workflow_id: str | None = None,
                        count_only: bool = False,
                        after: tuple[float, str] | None = None) -> tuple[list[JobRecord], int]:
        return await asyncio.to_thread(self.sync.list_jobs, statuses, limit, offset, order, workflow_id,
                                       count_only, after)

    async def jobs_awaiting_webhook(self) -> list[str]:
        return await asyncio.to_thread(self.sync.jobs_awaiting_webhook)

    async def count_jobs(self, status: str) -> int:
        return self.sync.count_jobs(status)

    async def queued_node_classes(self) -> dict[str, set[str]]:
        return self.sync.queued_node_classes()

    async def claim_next(self, exclude: set[str]) -> JobRecord | None:
        return self.sync.next_queued(exclude)

    async def requeue_orphans(self) -> list[JobEvent]:
        events = []
        for job in await asyncio.to_thread(self.sync.jobs_in, JobStatus.RUNNING):
            event = self.sync.set_status(job.id, JobStatus.QUEUED, event=EventType.REQUEUED)
            if event is not None:
                events.append(event)
        return events

    async def requeue_expired(self) -> list[JobEvent]:
        return []

    async def renew_leases(self) -> set[str]:
        return set()

    async def release(self, job_id: str) -> None:
        return None

    async def hand_back(self) -> list[JobEvent]:
        return []  # running jobs stay running in the file; the next start re-queues them

    async def set_status(self, job_id: str, status: str, *, error: dict[str, Any] | None = None,
                         event: str | None = None, data: dict[str, Any] | None = None) -> JobEvent | None:
        return self.sync.set_status(job_id, status, error=error, event=event, data=data)

    async def start_job(self, job_id: str, cached: dict[str, dict[str, Any] | None]) -> list[JobEvent]:
        return self.sync.start_job(job_id, cached)

    async def set_node_state(self, job_id: str, node_id: str, state: str, ui: dict[str, Any] | None = None,
                             event: str | None = None, data: dict[str, Any] | None = None,
                             cache: CacheEntry | None = None) -> JobEvent | None:
        return self.sync.set_node_state(job_id, node_id, state, ui, event, data, cache)

    async def finish_node(self, job_id: str, node_id: str, ui: dict[str, Any] | None, *, data: dict[str, Any],
                          cache: CacheEntry | None = None,
                          completed: dict[str, Any] | None = None) -> list[JobEvent]:
        return self.sync.finish_node(job_id, node_id, ui, data=data, cache=cache, completed=completed)

    async def set_node_states(self, job_id: str, nodes: dict[str, dict[str, Any] | None], state: str, *,
                              event: str | None = None, event_node: str = "", data: dict[str, Any] | None = None,
                              cache: list[CacheEntry] | None = None) -> JobEvent | None:
        return self.sync.set_node_states(job_id, nodes, state, event=event, event_node=event_node, data=data,
                                         cache=cache)

    async def node_states(self, job_id: str) -> list[dict[str, Any]]:
        return self.sync.node_states(job_id)

    async def delete_jobs(self, job_ids: list[str]) -> int:
        return await asyncio.to_thread(self.sync.delete_jobs, job_ids)

    async def append_event(self, job_id: str, type_: str, node_id: str = "",
                           data: dict[str, Any] | None = None) -> JobEvent:
        return self.sync.append_event(job_id, type_, node_id, data)

    async def events_after(self, after_id: int, job_id: str | None = None, limit: int = 1000) -> list[JobEvent]:
        return await asyncio.to_thread(self.sync.events_after, after_id, job_id, limit)

    async def last_event_id(self) -> int:
        return self.sync.last_event_id()

    async def cache_get_many(self, signatures: list[str]) -> dict[str, CachedOutputs]:
        return self.sync.cache_get_many(signatures)

    async def cache_put(self, signature: str, class_type: str, outputs: list[dict[str, Any]],
                        ui: dict[str, Any] | None) -> None:
        self.sync.cache_put(signature, class_type, outputs, ui)

    async def cache_rows(self) -> list[tuple[str, str, float]]:
        return await asyncio.to_thread(self.sync.cache_rows)

    async def cache_delete(self, signature: str) -> None:
        self.sync.cache_delete(signature)

    async def model_digest(self, location: str, name: str, version: str) -> str | None:
        return self.sync.model_digest(location, name, version)

    async def record_model_digest(self, location: str, name: str, version: str, size: int, sha256: str) -> None:
        self.sync.record_model_digest(location, name, version, size, sha256)
