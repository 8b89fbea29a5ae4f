"""The job service: what the gateway's routers ask about jobs, answered in domain objects over an `Engine`.

Routers turn HTTP into these calls and the answers into their API's shapes; filtering, ordering and paging
happen in the orchestrator, so no call here reads more jobs than it returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from comfymesh.contracts.events import FINISHED_STATUSES, JobEvent, JobStatus, is_terminal
from comfymesh.contracts.job_order import JobOrder
from comfymesh.gateway.engine import Engine, Job, JobPage, JobQuery, NewJob, OrchestratorUnavailable, Submission

FINISHED = tuple(FINISHED_STATUSES)
# how long to wait before following the event log again after the orchestrator went away
RESUBSCRIBE_DELAY_S = 0.5


class JobService:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def submit(self, job: NewJob) -> Submission:
        return await self.engine.submit(job)

    async def job(self, job_id: str) -> Job | None:
        """The job with its nodes, or None."""
        return await self.engine.get_job(job_id)

    async def exists(self, job_id: str) -> bool:
        return await self.engine.get_job(job_id, status_only=True) is not None

    async def page(self, query: JobQuery) -> JobPage:
        return await self.engine.list_jobs(query)

    async def queue(self) -> tuple[list[Job], list[Job]]:
        """(running, pending), each in run order: ComfyUI's whole queue."""
        running = await self.engine.list_jobs(JobQuery(statuses=(JobStatus.RUNNING,)))
        pending = await self.engine.list_jobs(JobQuery(statuses=(JobStatus.QUEUED,)))
        return running.jobs, pending.jobs

    async def queue_remaining(self) -> int:
        return await self.engine.count_jobs((JobStatus.QUEUED, JobStatus.RUNNING))

    async def history(self, max_items: int | None = None, offset: int | None = None) -> list[Job]:
        """Finished jobs, oldest first, as ComfyUI's /history pages them: `offset` counts from the oldest;
        without it, `max_items` takes the newest."""
        if max_items is not None and max_items <= 0:
            return []
        if offset is not None:
            page = await self.engine.list_jobs(JobQuery(FINISHED, JobOrder.OLDEST, max(offset, 0), max_items))
            return page.jobs
        if max_items is not None:
            page = await self.engine.list_jobs(JobQuery(FINISHED, JobOrder.NEWEST, 0, max_items))
            return page.jobs[::-1]
        return (await self.engine.list_jobs(JobQuery(FINISHED, JobOrder.OLDEST))).jobs

    async def in_status(self, job_ids: Sequence[str], statuses: Sequence[str]) -> list[str]:
        """Those of `job_ids` whose job exists and is in one of `statuses`."""
        found = [await self.engine.get_job(job_id, status_only=True) for job_id in job_ids]
        return [job.job_id for job in found if job is not None and job.status in statuses]

    async def cancel(self, job_id: str) -> Job | None:
        """Cancel a job, queued or running; the job afterwards, or None if there is none."""
        if not await self.exists(job_id):
            return None
        await self.engine.cancel(job_id)
        return await self.engine.get_job(job_id)

    async def cancel_each(self, job_ids: Sequence[str]) -> list[str]:
        """Cancel each job that can be; the ids cancelled (a finished or unknown job is a no-op)."""
        return [cancelled for job_id in job_ids if job_id for cancelled in await self.engine.cancel(job_id)]

    async def interrupt(self, job_id: str = "") -> None:
        """Stop `job_id` if it is running now (a queued one keeps its place), or every running job."""
        if not job_id:
            await self.engine.cancel("")
        elif await self.in_status([job_id], [JobStatus.RUNNING]):
            await self.engine.cancel(job_id)

    async def delete(self, job_ids: Sequence[str], statuses: Sequence[str]) -> None:
        """Delete those of `job_ids` in `statuses`; others are left alone."""
        wanted = await self.in_status(job_ids, statuses)
        if wanted:
            await self.engine.delete_jobs(wanted)

    async def clear(self, *, finished: bool = False, queued: bool = False) -> None:
        if finished or queued:
            await self.engine.delete_jobs([], all_finished=finished, all_queued=queued)

    async def follow(self, job_id: str = "", after: int = 0, previews: bool = False) -> AsyncIterator[JobEvent]:
        """The event log after id `after` (-1: from now on) and live events, of one job (ending with it) or of
        every job; if the orchestrator goes away, the log is followed again from the last event seen."""
        last = after
        while True:
            try:
                async for event in self.engine.events(job_id=job_id, after=last, follow=True, previews=previews):
                    if event.id:
                        last = event.id
                    yield event
                    if job_id and is_terminal(event.type):
                        return  # at once: the client need not wait for the orchestrator's stream to end
                return
            except OrchestratorUnavailable:
                await asyncio.sleep(RESUBSCRIBE_DELAY_S)
