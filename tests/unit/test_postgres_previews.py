"""Previews between orchestrators sharing PostgreSQL (issue 18): a preview one orchestrator emits reaches a
subscriber of another, bytes intact, through the UNLOGGED `previews` table (images exceed NOTIFY's 8000-byte
payload); the emitting orchestrator's own subscribers get it once; old rows are pruned by the next writer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from comfymesh.contracts.events import EventType, JobEvent
from comfymesh.jobs.postgres.store import PREVIEW_TTL_S, PostgresJobStore
from comfymesh.orchestrator.events import EventBus
from tests.postgres import PostgresServer, postgres  # noqa: F401 (fixture)

PROMPT = {"1": {"class_type": "EmptyImage", "inputs": {}}}
IMAGE = bytes(range(256)) * 64  # 16 KiB: twice what a NOTIFY payload may carry


@pytest.fixture
def url(postgres: PostgresServer) -> str:  # noqa: F811
    return postgres.new_database()


@pytest.fixture
async def buses(url: str) -> AsyncIterator[tuple[EventBus, EventBus]]:
    a = await PostgresJobStore.open(url, owner="orch-a")
    b = await PostgresJobStore.open(url, owner="orch-b")
    try:
        bus_a, bus_b = EventBus(a), EventBus(b)
        await bus_a.follow_store()
        await bus_b.follow_store()
        await a.add_job("x", 1, PROMPT, {}, "", ["1"], {"1": "EmptyImage"})
        yield bus_a, bus_b
    finally:
        await a.close()
        await b.close()


async def _previews(bus: EventBus, seen: list[JobEvent], ready: asyncio.Event) -> None:
    """Collect previews up to the one of node "end"."""
    stream = bus.stream("x", 0, follow=True, include_transient=True)
    ready.set()  # the generator subscribes on its first step, which the task takes at once
    async for event in stream:
        if event.id == 0:
            seen.append(event)
            if event.node_id == "end":
                return


async def test_a_preview_reaches_another_orchestrators_subscriber(buses: tuple[EventBus, EventBus]) -> None:
    bus_a, bus_b = buses
    on_a: list[JobEvent] = []
    on_b: list[JobEvent] = []
    ready_a, ready_b = asyncio.Event(), asyncio.Event()
    task_a = asyncio.create_task(_previews(bus_a, on_a, ready_a))
    task_b = asyncio.create_task(_previews(bus_b, on_b, ready_b))
    await ready_a.wait()
    await ready_b.wait()
    await asyncio.sleep(0)  # let both streams reach their live wait
    bus_a.emit_transient("x", EventType.NODE_PREVIEW, "3", {"format": "PNG", "data": IMAGE})
    bus_a.emit_transient("x", EventType.NODE_PREVIEW, "3", {"format": "JPEG", "data": IMAGE[:100]})
    bus_a.emit_transient("x", EventType.NODE_PREVIEW, "end", {"format": "PNG", "data": b"a"})
    await asyncio.wait_for(task_b, 10)
    assert [(e.type, e.node_id, e.data["format"], e.data["data"]) for e in on_b] == [
        (EventType.NODE_PREVIEW, "3", "PNG", IMAGE), (EventType.NODE_PREVIEW, "3", "JPEG", IMAGE[:100]),
        (EventType.NODE_PREVIEW, "end", "PNG", b"a")]
    # b's own preview reaches a after a's three, NOTIFYs arriving in commit order: a copy of one of a's own
    # (relayed back) would come before it
    bus_b.emit_transient("x", EventType.NODE_PREVIEW, "end", {"format": "PNG", "data": b"b"})
    await asyncio.wait_for(task_a, 10)
    assert [(e.node_id, e.data["data"]) for e in on_a] == [("3", IMAGE), ("3", IMAGE[:100]), ("end", b"a")]


async def test_old_previews_are_pruned_by_the_next_writer(buses: tuple[EventBus, EventBus], url: str) -> None:
    bus_a, _ = buses
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("INSERT INTO previews (origin, job_id, type, node_id, format, data, created) "
                           "VALUES ('orch-old', 'x', 'node_preview', '3', 'PNG', '\\x00', $1)",
                           time.time() - PREVIEW_TTL_S - 5)
        await bus_a.store.relay_transient(JobEvent(0, "x", EventType.NODE_PREVIEW, "3",
                                                   {"format": "PNG", "data": b"new"}, 0.0))
        rows = await conn.fetch("SELECT origin, data FROM previews")
        persistence = await conn.fetchval("SELECT relpersistence FROM pg_class WHERE relname = 'previews'")
    finally:
        await conn.close()
    assert [(r["origin"], bytes(r["data"])) for r in rows] == [("orch-a", b"new")]
    assert persistence == b"u"  # UNLOGGED: previews never reach the WAL
