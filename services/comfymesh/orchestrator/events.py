"""The event bus: every job event is written to the log first, then fanned out to live subscribers.

Writes are serialised so subscribers see ids strictly increasing; previews are transient (never in the log;
on a shared store relayed to the other orchestrators through PostgreSQL's UNLOGGED `previews` table).
On a shared store (PostgreSQL) other orchestrators write too: there every stored event reaches subscribers
from the store itself, read past the last one published whenever a NOTIFY says the log grew, so they keep
seeing ids strictly increasing whoever wrote them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

from comfymesh import trace
from comfymesh.contracts.events import FINISHED_STATUSES, TERMINAL_EVENTS, JobEvent
from comfymesh.jobs.protocol import AsyncJobStore

log = logging.getLogger("comfymesh.orchestrator")


class EventBus:
    def __init__(self, store: AsyncJobStore) -> None:
        self.store = store
        self._write_lock = asyncio.Lock()
        self._subscribers: set[asyncio.Queue[JobEvent]] = set()
        self._grew = asyncio.Event()  # shared stores: a NOTIFY came since the pump last read the log
        self._pump: asyncio.Task[None] | None = None
        # events this orchestrator wrote, by type (its job counters on /metrics; another's writes are its own)
        self.recorded: Counter[str] = Counter()
        self._relays: asyncio.Queue[JobEvent] = asyncio.Queue()  # previews on their way to other orchestrators
        self._relayer: asyncio.Task[None] | None = None

    async def follow_store(self) -> None:
        """On a shared store, publish every event any orchestrator stores, in id order (from now on)."""
        if not self.store.shared or self._pump is not None:
            return
        last = await self.store.last_event_id()
        await self.store.listen(lambda _event_id: self._grew.set())
        await self.store.listen_transient(self._publish)
        self._pump = asyncio.create_task(self._pump_forever(last))

    async def _pump_forever(self, last: int) -> None:
        while True:
            await self._grew.wait()
            self._grew.clear()
            while batch := await self.store.events_after(last):
                for event in batch:
                    last = event.id
                    self._publish(event)

    async def record(self, write: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a store write that appends an event (or a list of them), then publish what it appended.

        SQLite: on the event loop itself, each write is one short WAL transaction (tens of microseconds) with
        this process as the only writer, cheaper than the hop to a worker thread and back. A shared store's
        events are published by the pump, in the order every orchestrator's writes committed."""
        async with self._write_lock:
            with trace.child_span(f"store.{getattr(write, '__name__', 'write')}"):
                result = await write(*args, **kwargs)
            for event in result if isinstance(result, list) else [result]:
                if event is not None:
                    self.recorded[event.type] += 1
                    if not self.store.shared:
                        self._publish(event)
        return result

    async def emit(self, job_id: str, type_: str, node_id: str = "", data: dict[str, Any] | None = None) -> None:
        await self.record(self.store.append_event, job_id, type_, node_id, data or {})

    def emit_transient(self, job_id: str, type_: str, node_id: str, data: dict[str, Any]) -> None:
        """Live-only events (previews): id 0, not persisted, dropped for slow subscribers. On a shared store
        they are relayed to the other orchestrators too, in the background (a lost preview costs nothing)."""
        event = JobEvent(0, job_id, type_, node_id, data, 0.0)
        self._publish(event)
        if self.store.shared and self._relays.qsize() < 64:  # a store slower than the previews drops some
            self._relays.put_nowait(event)
            if self._relayer is None:
                self._relayer = asyncio.get_running_loop().create_task(self._relay_forever())

    async def _relay_forever(self) -> None:
        """One relay at a time, so other orchestrators see a node's previews in the order they were made."""
        while True:
            event = await self._relays.get()
            try:
                await self.store.relay_transient(event)
            except Exception as exc:  # the store being down is reported by the writes that matter
                log.warning("preview not relayed to other orchestrators",
                            extra={"job": event.job_id, "error": str(exc)})

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
                batch = await self.store.events_after(last, job_id)
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
                job = await self.store.get_job(job_id)
                if job is None:
                    return
                if job.status in FINISHED_STATUSES:
                    # it finished after the replay read the log: send what came since, then stop
                    for event in await self.store.events_after(last, job_id):
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
