"""What v2 routes share: the asset store and retention of the app serving the request, a queued job's place."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from comfymesh.contracts.events import JobStatus
from comfymesh.contracts.job_order import JobOrder
from comfymesh.gateway.engine import Job, JobQuery
from comfymesh.gateway.jobs_service import JobService
from comfymesh.gateway.v2.asset_store import AssetStore


def store_of(connection: HTTPConnection) -> AssetStore:
    return connection.app.state.v2_assets  # type: ignore[no-any-return]


def output_max_age_s(connection: HTTPConnection) -> float:
    return float(connection.app.state.settings.output_max_age_s)


async def queue_position(jobs: JobService, job: Job) -> int | None:
    """1 for the job that runs next; None unless the job is queued."""
    if job.status != JobStatus.QUEUED:
        return None
    page = await jobs.page(JobQuery(statuses=(JobStatus.QUEUED,), order=JobOrder.QUEUE))
    ids = [queued.job_id for queued in page.jobs]
    return ids.index(job.job_id) + 1 if job.job_id in ids else None
