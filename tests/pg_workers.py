"""Work for separate processes sharing one PostgreSQL job store (spawned: each its own pool and event loop)."""

from __future__ import annotations

import asyncio

from comfymesh.contracts.events import EventType, JobStatus


def claim_all(url: str, owner: str) -> list[str]:
    """One orchestrator's claim loop: take queued jobs until none is left; the ids it took."""

    async def run() -> list[str]:
        from comfymesh.jobs.postgres.store import PostgresJobStore

        store = await PostgresJobStore.open(url, owner=owner, max_connections=4)
        taken: list[str] = []
        try:
            while (job := await store.claim_next(set())) is not None:
                taken.append(job.id)
                await store.start_job(job.id, {})  # a fenced write per claim, as the scheduler makes
                await store.set_status(job.id, JobStatus.COMPLETED, event=EventType.COMPLETED)
        finally:
            await store.close()
        return taken

    return asyncio.run(run())


def write_events(url: str, writers: int, count: int, tag: str) -> int:
    """`writers` concurrent tasks each appending `count` progress events to its own job."""

    async def run() -> int:
        from comfymesh.jobs.postgres.store import PostgresJobStore

        store = await PostgresJobStore.open(url, owner=tag, max_connections=writers)
        try:
            async def writer(index: int) -> None:
                for step in range(count):
                    await store.append_event(f"{tag}-{index}", EventType.NODE_PROGRESS, "1", {"value": step})

            await asyncio.gather(*(writer(index) for index in range(writers)))
        finally:
            await store.close()
        return writers * count

    return asyncio.run(run())
