"""Our REST API: submit workflows, read jobs and their outputs, follow events over SSE."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from pydantic import ValidationError
from sse_starlette.sse import EventSourceResponse, ServerSentEvent

from comfymesh import trace
from comfymesh.catalog.files import resolve_inside
from comfymesh.contracts.events import JobStatus, is_terminal
from comfymesh.contracts.job_order import JobOrder
from comfymesh.gateway.engine import Job, JobQuery, NewJob
from comfymesh.gateway.idempotency import HEADER, KEY_PATTERN, MAX_KEY_LENGTH, request_digest, valid_key
from comfymesh.gateway.models import (
    CheckpointList,
    CheckpointModel,
    JobFailure,
    JobList,
    JobView,
    NodeStateModel,
    OutputImage,
    Problem,
    WorkflowAccepted,
    WorkflowSubmission,
)
from comfymesh.gateway.problems import problem_response
from comfymesh.gateway.request_io import catalog_of, jobs_of, principal_of, read_json_body
from comfymesh.gateway.stored_files import file_response, served_file

router = APIRouter(prefix="/v1", tags=["v1"])
TOTAL_HEADER = "X-Total-Count"


def image_url(request: Request, image: dict[str, Any]) -> str:
    """The absolute /view URL of an output image, under the base URL the client asked this gateway by."""
    return str(request.url_for("view_file").include_query_params(
        filename=image.get("filename", ""), subfolder=image.get("subfolder", ""), type=image.get("type", "output")))


def job_url(request: Request, job_id: str, suffix: str = "") -> str:
    return str(request.url_for("get_job", job_id=job_id)) + suffix


def as_number(value: float) -> int | float:
    """ComfyUI's `number` as JSON has it: an integer unless a client gave a fractional priority."""
    return int(value) if float(value).is_integer() else value


def job_view(request: Request, job: Job) -> JobView:
    error = None
    if job.error is not None:
        error = JobFailure(type=job.error.type, node_id=job.error.node_id, node_type=job.error.node_type,
                           message=job.error.message, details=job.error.details,
                           non_retryable=job.error.non_retryable)
    return JobView(job_id=job.job_id, status=job.status, number=as_number(job.number), created=job.created,
                   started=job.started,
                   finished=job.finished,
                   nodes=[NodeStateModel(node_id=n.node_id, class_type=n.class_type, state=n.state) for n in job.nodes],
                   outputs=job.outputs, images=[OutputImage(**image, url=image_url(request, image))
                                                for image in job.images()], error=error)


@router.post("/workflows", status_code=202, response_model=WorkflowAccepted,
             responses={400: {"description": "The workflow failed validation (`node_errors`)"},
                        409: {"description": "This Idempotency-Key was used with a different body"},
                        413: {"description": "The prompt is over the control plane's message limit"},
                        429: {"description": "The queue is full; see Retry-After"}},
             summary="Submit an API-format workflow")
async def submit_workflow(request: Request, response: Response,
                          idempotency_key: str | None = Header(
                              None, max_length=MAX_KEY_LENGTH, pattern=KEY_PATTERN,
                              description="makes a resubmit of the same body return the same job "
                                          "(per user); the same key with another body is a 409")) -> Any:
    trace.mark("gateway.submit")
    body = await read_json_body(request)
    if isinstance(body, dict) and isinstance(body.get("prompt"), dict):
        try:
            submission = WorkflowSubmission.model_validate(body)
        except ValidationError as exc:
            # the body is read by hand (it may be a bare prompt), so its option errors are raised here
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from exc
    elif isinstance(body, dict):
        submission = WorkflowSubmission(prompt=body)
    else:
        raise RequestValidationError([{"loc": ("body",), "msg": "the body must be a JSON object",
                                       "type": "dict_type"}])
    key = idempotency_key or ""
    if key and not valid_key(key):  # FastAPI checks the header too; this keeps the rule where it is used
        raise HTTPException(422, f"{HEADER} must be 1 to {MAX_KEY_LENGTH} characters of A-Z a-z 0-9 . _ ~ -")
    result = await jobs_of(request).submit(NewJob(
        submission.prompt, submission.extra_data, client_id=submission.client_id,
        idempotency_key=key, request_digest=request_digest(body) if key else "",
        priority=submission.priority, front=submission.front,
        timeout_s=submission.timeout_s, webhook_url=submission.webhook_url, user=principal_of(request)))
    if result.conflict:
        return problem_response(409, f"{HEADER} {key!r} was used with a different body; send a new key for a "
                                     "new job", code="idempotency_conflict", instance=request.url.path)
    if not result.accepted:
        refusal = result.refusal()
        error = refusal["error"]
        detail = f"{error['message']}: {error['details']}" if error.get("details") else str(error["message"])
        return problem_response(400, detail, code=error.get("type") or "invalid_prompt", title=error["message"],
                                instance=request.url.path, node_errors=refusal["node_errors"])
    status_url = job_url(request, result.job_id)
    response.headers["Location"] = status_url
    return WorkflowAccepted(job_id=result.job_id, number=as_number(result.number), node_errors=result.node_errors,
                            status_url=status_url, events_url=job_url(request, result.job_id, "/events"),
                            existing=result.existing)


@router.get("/jobs/{job_id}", response_model=JobView, responses={404: {"model": Problem}},
            summary="A job's status, node states, outputs and error")
async def get_job(job_id: str, request: Request) -> JobView:
    job = await jobs_of(request).job(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}")
    return job_view(request, job)


@router.post("/jobs/{job_id}/cancel", response_model=JobView, responses={404: {"model": Problem}},
             summary="Cancel a job, queued or running (a running sampler stops within one step)")
async def cancel_job(job_id: str, request: Request) -> JobView:
    job = await jobs_of(request).cancel(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}")
    return job_view(request, job)


@router.get("/jobs/{job_id}/output", response_class=FileResponse, responses={404: {"model": Problem},
            409: {"model": Problem}, 200: {"content": {"image/png": {}}}}, summary="A job's output image")
async def get_output(job_id: str, request: Request, index: int = Query(0, ge=0, le=100_000)) -> Response:
    job = await jobs_of(request).job(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}")
    images = job.images()
    if not images:
        raise HTTPException(409, f"job {job_id} has no output image yet (status: {job.status})")
    if index >= len(images):
        raise HTTPException(404, f"job {job_id} has {len(images)} output image(s); index {index} is out of range")
    image = images[index]
    home = request.app.state.settings.home
    folder = image.get("type", "output")
    if folder not in ("output", "temp", "input"):
        raise HTTPException(404, "unknown output folder")
    path = resolve_inside(home / folder, "/".join(p for p in (image.get("subfolder", ""), image["filename"]) if p))
    if path is None or not path.is_file():
        raise HTTPException(404, f"output file {image['filename']} is gone (cleaned up?)")
    media_type, headers = served_file(path.name)
    return await file_response(path, media_type, headers=headers)


@router.get("/checkpoints", response_model=CheckpointList, summary="Checkpoint files with size and digest")
async def list_checkpoints(request: Request) -> CheckpointList:
    files = await catalog_of(request).checkpoints()
    return CheckpointList(checkpoints=[CheckpointModel(name=f.name, size=f.size, digest=f.digest) for f in files])


def _resume_point(last_event_id: str | None, after: int | None, replay: int) -> int:
    """The event id to follow from: `after`, else Last-Event-ID, else `replay` (-1: live only, 0: all)."""
    if after is not None:
        return after
    try:
        return int(last_event_id) if last_event_id else replay
    except ValueError:
        raise HTTPException(400, "Last-Event-ID must be an event id (an integer)") from None


async def _sse(request: Request, job_id: str, after: int) -> AsyncIterator[ServerSentEvent]:
    """Relay the event log as it is written: each event carries what a client shows, no job is read back."""
    async for event in jobs_of(request).follow(job_id, after):
        payload = {"job_id": event.job_id, "node_id": event.node_id, "ts": event.ts, **event.data}
        if isinstance(payload.get("images"), list):  # `completed`: where to fetch each image
            payload["images"] = [{**image, "url": image_url(request, image)} for image in payload["images"]
                                 if isinstance(image, dict)]
        yield ServerSentEvent(data=json.dumps(payload), event=event.type, id=str(event.id))
        if job_id and is_terminal(event.type):
            trace.mark("gateway.sse_final_event")


@router.get("/events", response_class=EventSourceResponse,
            summary="Every job's events (SSE), live from now unless `after` or Last-Event-ID asks for a replay",
            responses={200: {"content": {"text/event-stream": {}}}, 400: {"description": "A bad Last-Event-ID"}})
async def all_events(request: Request, last_event_id: str | None = Header(None),
                     after: int | None = Query(None, ge=0, le=2**62, description="replay after this event id")) -> Any:
    return EventSourceResponse(_sse(request, "", _resume_point(last_event_id, after, -1)), ping=15)


@router.get("/jobs/{job_id}/events", response_class=EventSourceResponse,
            summary="One job's events (SSE) from its first, ending with its terminal event",
            responses={200: {"content": {"text/event-stream": {}}}, 400: {"description": "A bad Last-Event-ID"},
                       404: {"model": Problem}})
async def job_events(job_id: str, request: Request, last_event_id: str | None = Header(None),
                     after: int | None = Query(None, ge=0, le=2**62, description="resume after this event id")) -> Any:
    if not await jobs_of(request).exists(job_id):
        raise HTTPException(404, f"no job {job_id!r}")
    return EventSourceResponse(_sse(request, job_id, _resume_point(last_event_id, after, 0)), ping=15)


def _cursor(job: Job) -> str:
    """An opaque cursor past `job`: its creation time and id, so no job that arrives or goes moves the pages."""
    return base64.urlsafe_b64encode(json.dumps([job.created, job.job_id]).encode()).decode().rstrip("=")


def _after(cursor: str) -> tuple[float, str]:
    """The (created, job id) a cursor of `_cursor` stands for; a cursor of ours only (422 otherwise)."""
    try:
        created, job_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if isinstance(created, int | float) and not isinstance(created, bool) and isinstance(job_id, str):
            return float(created), job_id
    except (ValueError, TypeError):  # not base64, text or JSON; or JSON but not a pair
        pass
    raise HTTPException(422, "cursor is not one this API gave: pass the `next` of the previous page")


@router.get("/jobs", summary="Jobs, newest first, a page at a time", response_model=JobList,
            responses={200: {"headers": {TOTAL_HEADER: {"description": "how many jobs match, on every page",
                                                        "schema": {"type": "integer"}}}}})
async def list_jobs(request: Request, response: Response, status: JobStatus | None = Query(None),
                    limit: int = Query(50, ge=1, le=1000),
                    cursor: str | None = Query(None, max_length=400, pattern=r"^[A-Za-z0-9_-]+$",
                                                description="`next` of the previous page")
                    ) -> JobList:
    # one job more than asked for says whether a next page exists
    page = await jobs_of(request).page(JobQuery(statuses=(status,) if status else (), order=JobOrder.NEWEST,
                                                limit=limit + 1, after=_after(cursor) if cursor else None))
    response.headers[TOTAL_HEADER] = str(page.total)
    items = page.jobs[:limit]
    return JobList(items=[job_view(request, job) for job in items], total=page.total,
                   next=_cursor(items[-1]) if len(page.jobs) > limit else None)
