"""ComfyUI's queue, history, jobs, interrupt and free routes over the orchestrator's job store (§6)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from comfymesh.contracts.events import JobStatus
from comfymesh.contracts.job_order import JobOrder
from comfymesh.gateway.comfy.history import JOB_STATUS, OUR_STATUS, history_entry, job_item, queue_item
from comfymesh.gateway.engine import JobQuery
from comfymesh.gateway.jobs_service import FINISHED
from comfymesh.gateway.request_io import catalog_of, jobs_of, read_optional_json

router = APIRouter(include_in_schema=False)
jobs_router = APIRouter(include_in_schema=False)
# the jobs API's (sort_by, sort_order) -> the orchestrator's order
_ORDERS = {("created_at", "desc"): JobOrder.NEWEST, ("created_at", "asc"): JobOrder.OLDEST,
           ("execution_duration", "desc"): JobOrder.LONGEST, ("execution_duration", "asc"): JobOrder.SHORTEST}


def _ids(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


@router.get("/queue")
async def get_queue(request: Request) -> dict[str, Any]:
    running, pending = await jobs_of(request).queue()
    return {"queue_running": [queue_item(job) for job in running],
            "queue_pending": [queue_item(job) for job in pending]}


@router.post("/queue")
async def change_queue(request: Request) -> Response:
    body, jobs = await read_optional_json(request), jobs_of(request)
    await jobs.clear(queued=bool(body.get("clear")))
    # running items are left alone: that is what /interrupt is for
    await jobs.delete(_ids(body.get("delete")), [JobStatus.QUEUED])
    return Response(status_code=200)


@router.get("/history")
async def get_history(request: Request, max_items: int | None = None, offset: int | None = None) -> dict[str, Any]:
    return {job.job_id: history_entry(job) for job in await jobs_of(request).history(max_items, offset)}


@router.get("/history/{prompt_id}")
async def get_history_entry(prompt_id: str, request: Request) -> dict[str, Any]:
    job = await jobs_of(request).job(prompt_id)
    if job is None or not job.is_finished:
        return {}
    return {job.job_id: history_entry(job)}


@router.post("/history")
async def change_history(request: Request) -> Response:
    body, jobs = await read_optional_json(request), jobs_of(request)
    await jobs.clear(finished=bool(body.get("clear")))
    await jobs.delete(_ids(body.get("delete")), FINISHED)
    return Response(status_code=200)


@router.post("/interrupt")
async def interrupt(request: Request) -> Response:
    prompt_id = (await read_optional_json(request)).get("prompt_id")
    # a prompt id: only that prompt, if it is running now; a queued one keeps its place (ComfyUI 0.8.0)
    await jobs_of(request).interrupt(str(prompt_id) if prompt_id else "")
    return Response(status_code=200)


@router.post("/free")
async def free(request: Request) -> Response:
    body = await read_optional_json(request)
    if body.get("unload_models") or body.get("free_memory"):
        await catalog_of(request).free(unload_models=True, free_memory=bool(body.get("free_memory")))
    return Response(status_code=200)


def _bad(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


@jobs_router.get("/api/jobs")
async def list_jobs(request: Request) -> Any:
    query = request.query_params
    wanted = [s.strip() for s in query.get("status", "").split(",") if s.strip()]
    unknown = [s for s in wanted if s not in OUR_STATUS]
    if unknown:
        return _bad(f"Invalid status value(s): {', '.join(unknown)}. Valid values: {', '.join(JOB_STATUS.values())}")
    sort_by, sort_order = query.get("sort_by", "created_at"), query.get("sort_order", "desc")
    if sort_by not in ("created_at", "execution_duration"):
        return _bad("sort_by must be 'created_at' or 'execution_duration'")
    if sort_order not in ("asc", "desc"):
        return _bad("sort_order must be 'asc' or 'desc'")
    try:
        limit = int(query["limit"]) if "limit" in query else None
        offset = max(int(query.get("offset", "0")), 0)
    except ValueError:
        return _bad("limit must be an integer" if "limit" in query else "offset must be an integer")
    if limit is not None and limit <= 0:
        return _bad("limit must be a positive integer")
    page = await jobs_of(request).page(JobQuery(
        statuses=[OUR_STATUS[s] for s in wanted], order=_ORDERS[sort_by, sort_order], offset=offset, limit=limit,
        workflow_id=query.get("workflow_id")))
    return {"jobs": [job_item(job) for job in page.jobs],
            "pagination": {"offset": offset, "limit": limit if limit is not None else len(page.jobs),
                           "total": page.total, "has_more": page.has_more}}


@jobs_router.post("/api/jobs/cancel")
async def cancel_jobs(request: Request) -> dict[str, Any]:
    body = await read_optional_json(request)
    return {"cancelled": await jobs_of(request).cancel_each(_ids(body.get("job_ids")))}


@jobs_router.get("/api/jobs/{job_id}")
async def get_job(job_id: str, request: Request) -> Any:
    job = await jobs_of(request).job(job_id)
    if job is None:
        return JSONResponse({"error": "Job not found"}, status_code=404)
    return job_item(job, detailed=True)


@jobs_router.post("/api/jobs/{job_id}/cancel")
async def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
    # idempotent: a finished or unknown job is a no-op (§6.5)
    return {"cancelled": await jobs_of(request).cancel_each([job_id])}
