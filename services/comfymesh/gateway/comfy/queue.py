"""ComfyUI's queue, history, jobs, interrupt and free routes over the orchestrator's job store (§6)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from comfymesh.gateway.api_v1 import client_of, refuse_plain_text
from comfymesh.gateway.client import OrchestratorClient
from comfymesh.gateway.comfy.history import JOB_STATUS, OUR_STATUS, history_entry, job_item, queue_item
from comfymesh.v1 import orchestrator_pb2

router = APIRouter(include_in_schema=False)
jobs_router = APIRouter(include_in_schema=False)
FINISHED = ["completed", "failed", "cancelled"]


async def _optional_json(request: Request) -> dict[str, Any]:
    """ComfyUI tolerates an empty or non-JSON body on these routes: it means 'no options'."""
    raw = await request.body()
    if raw:
        refuse_plain_text(request)
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) else {}


def _ids(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


async def _jobs(client: OrchestratorClient, statuses: list[str]) -> list[orchestrator_pb2.Job]:
    return list((await client.list_jobs(statuses, newest_first=True)).jobs)


async def _with_status(client: OrchestratorClient, ids: list[str], statuses: list[str]) -> list[str]:
    found = [await client.get_job(job_id) for job_id in ids]
    return [job.job_id for job in found if job is not None and job.status in statuses]


@router.get("/queue")
async def get_queue(request: Request) -> dict[str, Any]:
    client = client_of(request)
    running = await client.list_jobs(["running"])
    pending = await client.list_jobs(["queued"])
    return {"queue_running": [queue_item(job) for job in running.jobs],
            "queue_pending": [queue_item(job) for job in pending.jobs]}


@router.post("/queue")
async def change_queue(request: Request) -> Response:
    body, client = await _optional_json(request), client_of(request)
    if body.get("clear"):
        await client.delete_jobs([], all_queued=True)
    # running items are left alone: that is what /interrupt is for
    ids = await _with_status(client, _ids(body.get("delete")), ["queued"])
    if ids:
        await client.delete_jobs(ids)
    return Response(status_code=200)


@router.get("/history")
async def get_history(request: Request, max_items: int | None = None, offset: int | None = None) -> dict[str, Any]:
    jobs = list(reversed(await _jobs(client_of(request), FINISHED)))  # oldest first, like ComfyUI's dict
    if offset is not None:
        jobs = jobs[max(offset, 0):]
        if max_items is not None:
            jobs = jobs[:max(max_items, 0)]
    elif max_items is not None:
        jobs = jobs[-max_items:] if max_items > 0 else []
    return {job.job_id: history_entry(job) for job in jobs}


@router.get("/history/{prompt_id}")
async def get_history_entry(prompt_id: str, request: Request) -> dict[str, Any]:
    job = await client_of(request).get_job(prompt_id)
    if job is None or job.status not in FINISHED:
        return {}
    return {job.job_id: history_entry(job)}


@router.post("/history")
async def change_history(request: Request) -> Response:
    body, client = await _optional_json(request), client_of(request)
    if body.get("clear"):
        await client.delete_jobs([], all_finished=True)
    ids = await _with_status(client, _ids(body.get("delete")), FINISHED)
    if ids:
        await client.delete_jobs(ids)
    return Response(status_code=200)


@router.post("/interrupt")
async def interrupt(request: Request) -> Response:
    body, client = await _optional_json(request), client_of(request)
    prompt_id = body.get("prompt_id")
    if prompt_id:
        # only a prompt that is running now; a queued one keeps its place (ComfyUI 0.8.0)
        if await _with_status(client, [str(prompt_id)], ["running"]):
            await client.cancel(str(prompt_id))
    else:
        await client.cancel("")
    return Response(status_code=200)


@router.post("/free")
async def free(request: Request) -> Response:
    body = await _optional_json(request)
    if body.get("unload_models") or body.get("free_memory"):
        await client_of(request).free(unload_models=True, free_memory=bool(body.get("free_memory")))
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
    jobs = await _jobs(client_of(request), [OUR_STATUS[s] for s in wanted] or list(JOB_STATUS))
    items = [job_item(job) for job in jobs]
    if "workflow_id" in query:
        items = [i for i in items if i.get("workflow_id") == query["workflow_id"]]

    def duration(item: dict[str, Any]) -> int:
        return int(item.get("execution_end_time", 0)) - int(item.get("execution_start_time", 0))

    items.sort(key=(lambda i: i["create_time"]) if sort_by == "created_at" else duration,
               reverse=sort_order == "desc")
    page = items[offset:offset + limit] if limit is not None else items[offset:]
    return {"jobs": page, "pagination": {"offset": offset, "limit": limit if limit is not None else len(page),
                                         "total": len(items), "has_more": offset + len(page) < len(items)}}


@jobs_router.post("/api/jobs/cancel")
async def cancel_jobs(request: Request) -> dict[str, Any]:
    body, client = await _optional_json(request), client_of(request)
    cancelled = [job_id for job_id in _ids(body.get("job_ids")) for job_id in await client.cancel(job_id)]
    return {"cancelled": cancelled}


@jobs_router.get("/api/jobs/{job_id}")
async def get_job(job_id: str, request: Request) -> Any:
    job = await client_of(request).get_job(job_id)
    if job is None:
        return JSONResponse({"error": "Job not found"}, status_code=404)
    return job_item(job, detailed=True)


@jobs_router.post("/api/jobs/{job_id}/cancel")
async def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
    # idempotent: a finished or unknown job is a no-op (§6.5)
    return {"cancelled": await client_of(request).cancel(job_id) if job_id else []}
