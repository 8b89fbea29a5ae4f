"""The event bus: every job event is written to the log first, then fanned out to live subscribers.

Writes are serialised so subscribers see ids strictly increasing; previews are transient (never stored).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from comfymesh.contracts.events import FINISHED_STATUSES, TERMINAL_EVENTS, JobEvent
from comfymesh.jobs import JobStore


class EventBus:
    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._write_lock = asyncio.Lock()
        self._subscribers: set[asyncio.Queue[JobEvent]] = set()

    async def record(self, write: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a store write that appends an event (or a list of them), then publish what it appended.

        On the event loop itself: each write is one short WAL transaction (tens of microseconds) with
        this process as the only writer, cheaper than the hop to a worker thread and back."""
        async with self._write_lock:
            result = write(*args, **kwargs)
            for event in result if isinstance(result, list) else [result]:
                if event is not None:
                    self._publish(event)
        return result

    async def emit(self, job_id: str, type_: str, node_id: str = "", data: dict[str, Any] | None = None) -> None:
        await self.record(self.store.append_event, job_id, type_, node_id, data or {})

    def emit_transient(self, job_id: str, type_: str, node_id: str, data: dict[str, Any]) -> None:
        """Live-only events (previews): id 0, not persisted, dropped for slow subscribers."""
        self._publish(JobEvent(0, job_id, type_, node_id, data, 0.0))

    def _publish(self, event: JobEvent) -> None:
        for queue in list(self._subscribers):
            if event.id == 0 and queue.qsize() > 64:
                continue
            queue.put_nowait(event)

    async def stream(self, job_id: str | None, after_id: int, follow: bool,
                     include_transient: bool = False) -> AsyncIterator[JobEvent]:
        """Replay the log after `after_id`, then (if `follow`) live events; a job's stream ends with it."""
        queue: asyncio.Queue[JobEvent] = asyncio.Queue()
        self._subscribers.add(queue)
        try:
            last = after_id
            while True:
                batch = await asyncio.to_thread(self.store.events_after, last, job_id)
                for event in batch:
                    last = event.id
                    yield event
                    if job_id and event.type in TERMINAL_EVENTS:
                        return
                if len(batch) < 1000:
                    break
            if job_id and not follow:
                return
            if job_id:
                job = await asyncio.to_thread(self.store.get_job, job_id)
                if job is None:
                    return
                if job.status in FINISHED_STATUSES:
                    # it finished after the replay read the log: send what came since, then stop
                    for event in await asyncio.to_thread(self.store.events_after, last, job_id):
                        yield event
                    return
            if not follow:
                return
            while True:
                event = await queue.get()
                if job_id and event.job_id != job_id:
                    continue
                if event.id == 0:
                    if include_transient:
                        yield event
                    continue
                if event.id <= last:
                    continue
                last = event.id
                yield event
                if job_id and event.type in TERMINAL_EVENTS:
                    return
        finally:
            self._subscribers.discard(queue)
