"""The operators' view of the running cluster: `GET /v1/cluster` (queue depth, running jobs with progress, each
orchestrator and stage replica, recent failures) and the page that shows it live (`/ui/cluster`, `ui/cluster/`).
`comfymesh status` reads the same route."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from comfymesh.contracts.events import JobStatus
from comfymesh.contracts.job_order import JobOrder
from comfymesh.gateway.engine import Engine, JobQuery, OrchestratorState
from comfymesh.gateway.models import (
    ClusterView,
    OrchestratorModel,
    RecentFailure,
    ReplicaModel,
    RunningJobModel,
)

PAGE_DIR = Path(__file__).resolve().parents[3] / "ui" / "cluster"
PAGE_PATH = "/ui/cluster"
router = APIRouter(prefix="/v1", tags=["cluster"])


async def cluster_view(engine: Engine, failures: int = 10) -> ClusterView:
    """Ask the orchestrators and the job store at once: the store knows every orchestrator's jobs, each
    orchestrator its replicas and the progress of its own jobs."""
    state, queued, running, failed = await asyncio.gather(
        engine.cluster(), engine.count_jobs((JobStatus.QUEUED,)),
        engine.list_jobs(JobQuery(statuses=(JobStatus.RUNNING,))),
        engine.list_jobs(JobQuery(statuses=(JobStatus.FAILED,), order=JobOrder.NEWEST, limit=failures)))
    return ClusterView(queued=queued, orchestrators=[_orchestrator(s) for s in state], running=[
        _running(job.job_id, job.started, state) for job in running.jobs], failures=[
        RecentFailure(job_id=job.job_id, finished=job.finished, node_id=job.error.node_id if job.error else "",
                      node_type=job.error.node_type if job.error else "", type=job.error.type if job.error else "",
                      message=job.error.message if job.error else "") for job in failed.jobs])


def _orchestrator(state: OrchestratorState) -> OrchestratorModel:
    return OrchestratorModel(address=state.address, healthy=state.healthy, name=state.name,
                             max_running_jobs=state.max_running_jobs,
                             waiting_calls=state.waiting_calls, replicas=[
        ReplicaModel(stage=r.stage, address=r.address, healthy=r.healthy, slots=r.slots, in_flight=r.in_flight,
                     device=r.device, models=list(r.models), device_total_bytes=r.device_total_bytes,
                     device_free_bytes=r.device_free_bytes, memory_budget_bytes=r.memory_budget_bytes,
                     memory_used_bytes=r.memory_used_bytes, failures=r.failures) for r in state.replicas])


def _running(job_id: str, started: float | None, states: tuple[OrchestratorState, ...]) -> RunningJobModel:
    found = next(((s, p) for s in states for p in s.running if p.job_id == job_id), None)
    if found is None:  # its orchestrator did not answer (or the job is just finishing)
        return RunningJobModel(job_id=job_id, started=started, orchestrator=None, node_id="", class_type="",
                               value=0, max=0, nodes_done=0, nodes_total=0)
    state, progress = found
    return RunningJobModel(job_id=job_id, started=started, orchestrator=state.name, node_id=progress.node_id,
                           class_type=progress.class_type, value=progress.value, max=progress.max,
                           nodes_done=progress.nodes_done, nodes_total=progress.nodes_total)


@router.get("/cluster", response_model=ClusterView,
            summary="The running cluster: queue depth, running jobs with progress, orchestrators and stage "
                    "replicas (health, slots in use, loaded models, device memory), recent failures",
            responses={503: {"description": "The orchestrator is unavailable; see Retry-After"}})
async def get_cluster(request: Request, failures: int = Query(10, ge=0, le=100,
                                                               description="how many recent failures")) -> ClusterView:
    return await cluster_view(request.app.state.engine, failures)


def install(app: FastAPI) -> None:
    app.include_router(router)

    @app.get(PAGE_PATH, include_in_schema=False)
    async def page() -> RedirectResponse:
        return RedirectResponse(PAGE_PATH + "/", status_code=308)

    app.mount(PAGE_PATH, StaticFiles(directory=PAGE_DIR, html=True), name="cluster_page")
