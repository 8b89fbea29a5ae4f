"""Saved workflows over HTTP: register, list, read and delete them, run one with typed inputs, and read a
job's images in another format. Logic lives in `declaration`, `runs` and `outputs`; routes do HTTP."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from comfymesh.contracts.events import JobStatus
from comfymesh.files import LocalFiles
from comfymesh.gateway.engine import Job
from comfymesh.gateway.models import JobFailure, Problem
from comfymesh.gateway.problems import problem_response
from comfymesh.gateway.request_io import catalog_of, jobs_of, principal_of
from comfymesh.gateway.stored_files import served_file
from comfymesh.gateway.workflows.conversion import ConversionError, api_format
from comfymesh.gateway.workflows.declaration import DeclarationError, PublicInput, declare_inputs, run_model
from comfymesh.gateway.workflows.image_inputs import ImageSources, InputRefused
from comfymesh.gateway.workflows.models import (
    RunImage,
    RunRequest,
    RunResult,
    SavedWorkflowList,
    SavedWorkflowView,
    WorkflowRegistration,
)
from comfymesh.gateway.workflows.outputs import DestinationRefused, OutputFormat, allowed_destination
from comfymesh.gateway.workflows.runs import Rendered, WorkflowRunner, render
from comfymesh.gateway.workflows.store import NAME_PATTERN, WorkflowStore
from comfymesh.outbound import OutboundPolicy

router = APIRouter(prefix="/v1", tags=["saved workflows"])
NAME = Path(pattern=NAME_PATTERN, max_length=64, description="the saved workflow's name")


def store_of(request: Request) -> WorkflowStore:
    return request.app.state.workflow_store  # type: ignore[no-any-return]


def runner_of(request: Request) -> WorkflowRunner:
    """The app's runner, made on first use (the job service it drives exists once the app has started)."""
    state = request.app.state
    if getattr(state, "workflow_runner", None) is None:
        settings = state.settings
        home = state.files.root if isinstance(state.files, LocalFiles) else settings.home
        state.workflow_runner = WorkflowRunner(jobs_of(request), settings, ImageSources(
            home / "input", OutboundPolicy.parse(settings.outbound_allow), settings.url_input_max_bytes,
            settings.url_input_timeout_s, settings.max_pixels, state.files))
    return state.workflow_runner  # type: ignore[no-any-return]


def inputs_of(record: dict[str, Any]) -> list[PublicInput]:
    return [PublicInput.from_json(item) for item in record.get("inputs", [])]


def example_body(record: dict[str, Any]) -> dict[str, Any]:
    """A run request with every input at its default (an image input shows an upload's name)."""
    values = {item.name: item.default if item.kind != "image" else {"upload": "example.png"}
              for item in inputs_of(record)}
    return {"inputs": values, "output": {"format": "png"}, "wait_s": 30}


def saved_view(request: Request, record: dict[str, Any]) -> SavedWorkflowView:
    return SavedWorkflowView.model_validate({
        "name": record["name"], "description": record.get("description", ""),
        "inputs": [item.to_json() for item in inputs_of(record)], "workflow": record["workflow"],
        "run_url": str(request.url_for("run_saved_workflow", name=record["name"])), "example": example_body(record)})


def saved(request: Request, name: str) -> dict[str, Any]:
    record = store_of(request).get(name)
    if record is None:
        raise HTTPException(404, f"no saved workflow {name!r}: register it with PUT /v1/workflows/{name}")
    return record


def job_link(request: Request, job_id: str, suffix: str = "") -> str:
    """The absolute URL of /v1's job route (another router's, reached by its name)."""
    return str(request.url_for("get_job", job_id=job_id)) + suffix


def failure(job: Job | None) -> JobFailure | None:
    error = job.error if job is not None else None
    return None if error is None else JobFailure(type=error.type, node_id=error.node_id, node_type=error.node_type,
                                                 message=error.message, details=error.details,
                                                 non_retryable=error.non_retryable)


def invalid(loc: tuple[Any, ...], message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": loc, "msg": message, "type": "value_error"}])


@router.get("/workflows", response_model=SavedWorkflowList, summary="Saved workflows, by name")
async def list_saved(request: Request) -> SavedWorkflowList:
    records = await asyncio.to_thread(store_of(request).all)
    return SavedWorkflowList(items=[saved_view(request, record) for record in records], total=len(records))


@router.put("/workflows/{name}", response_model=SavedWorkflowView,
            responses={201: {"model": SavedWorkflowView, "description": "Saved under a new name"}},
            summary="Save a workflow (API or UI format) under a name, with its public inputs typed from its nodes")
async def register(request: Request, response: Response, registration: WorkflowRegistration,
                   name: str = NAME) -> SavedWorkflowView:
    object_info = await catalog_of(request).object_info()
    try:
        workflow = api_format(registration.workflow, object_info)
    except ConversionError as exc:
        raise invalid(("body", "workflow"), str(exc)) from None
    try:
        inputs = declare_inputs(workflow, object_info, [item.model_dump(exclude_none=True)
                                                        for item in registration.inputs])
    except DeclarationError as exc:
        raise invalid(("body", "inputs"), str(exc)) from None
    except ValidationError as exc:  # a default outside its range
        raise invalid(("body", "inputs"), "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors())) from None
    record = {"name": name, "description": registration.description, "workflow": workflow,
              "inputs": [item.to_json() for item in inputs]}
    store = store_of(request)
    existed = store.get(name) is not None
    await asyncio.to_thread(store.put, name, record)
    response.status_code = 200 if existed else 201
    return saved_view(request, record)


@router.get("/workflows/{name}", response_model=SavedWorkflowView, responses={404: {"model": Problem}},
            summary="A saved workflow: its inputs with types, defaults and ranges, and an example run")
async def get_saved(request: Request, name: str = NAME) -> SavedWorkflowView:
    return saved_view(request, saved(request, name))


@router.delete("/workflows/{name}", status_code=204, responses={404: {"model": Problem}},
               summary="Forget a saved workflow (its jobs and images stay)")
async def delete_saved(request: Request, name: str = NAME) -> Response:
    if not await asyncio.to_thread(store_of(request).delete, name):
        raise HTTPException(404, f"no saved workflow {name!r}")
    return Response(status_code=204)


def run_image(request: Request, job_id: str, image: Rendered, body: RunRequest) -> RunImage:
    url = request.url_for("job_image", job_id=job_id, index=str(image.index)).include_query_params(
        format=body.output.format.value, quality=body.output.quality)
    return RunImage(index=image.index, filename=image.filename, media_type=image.media_type, url=str(url),
                    base64=base64.b64encode(image.data).decode() if body.images_as == "base64" else None,
                    destination=image.destination)


@router.post("/workflows/{name}/run", response_model=RunResult,
             responses={202: {"model": RunResult, "description": "Accepted; still running when `wait_s` passed"},
                        400: {"model": Problem, "description": "The workflow failed validation (`node_errors`)"},
                        404: {"model": Problem}, 429: {"description": "The queue is full; see Retry-After"},
                        502: {"model": Problem, "description": "The job completed; writing to the destination "
                                                               "failed (`destination_failed`)"}},
             summary="Run a saved workflow (each saved workflow's own entry below has its typed inputs)")
async def run_saved_workflow(request: Request, body: RunRequest, name: str = NAME) -> Any:
    record = saved(request, name)
    inputs = inputs_of(record)
    try:
        values = run_model(name, inputs).model_validate(body.inputs)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", "inputs", *e["loc"])} for e in exc.errors()]) from None
    destination = None
    if body.output.destination is not None:
        try:
            destination = allowed_destination(request.app.state.settings, body.output.destination)
        except DestinationRefused as exc:
            raise invalid(("body", "output", "destination"), str(exc)) from None
    runner = runner_of(request)
    try:
        prompt = await runner.prompt_for(record["workflow"], inputs, values.model_dump(exclude_unset=True, by_alias=True))
    except InputRefused as exc:
        raise invalid(("body", "inputs"), str(exc)) from None
    submission = await runner.submit(prompt, user=principal_of(request), timeout_s=body.timeout_s,
                                     webhook_url=body.webhook_url, workflow_name=name)
    if not submission.accepted:
        refusal = submission.refusal()
        error = refusal["error"]
        return problem_response(400, f"{error['message']}: {error.get('details') or ''}".rstrip(": "),
                                code=error.get("type") or "invalid_prompt", title=error["message"],
                                instance=request.url.path, node_errors=refusal["node_errors"])
    job_id = submission.job_id
    job = await runner.wait(job_id, body.wait_s)
    finished = job is not None and job.is_finished
    result = RunResult(job_id=job_id, status=job.status if job else JobStatus.QUEUED,
                       status_url=job_link(request, job_id), events_url=job_link(request, job_id, "/events"),
                       error=failure(job))
    if job is not None and job.status == JobStatus.COMPLETED:
        try:
            rendered = await runner.deliver(job, body.output.format, body.output.quality, destination)
        except OSError as exc:  # fsspec's storage errors: the job is done, its images stay here
            return problem_response(502, f"job {job_id} completed but writing its images to {destination} failed "
                                         f"({type(exc).__name__}); they are at {result.status_url}",
                                    code="destination_failed", instance=request.url.path)
        result.images = [run_image(request, job_id, image, body) for image in rendered]
    elif destination and not finished:
        runner.deliver_later(job_id, body.output.format, body.output.quality, destination)
    headers = {"Location": result.status_url}
    return JSONResponse(result.model_dump(mode="json"), status_code=200 if finished else 202, headers=headers)


@router.get("/jobs/{job_id}/images/{index}", response_class=Response,
            responses={200: {"content": {"image/png": {}, "image/webp": {}, "image/jpeg": {}}},
                       404: {"model": Problem}},
            summary="A job's output image, as PNG (as saved), WebP or JPEG")
async def job_image(request: Request, job_id: str = Path(max_length=128), index: int = Path(ge=0, le=100_000),
                    format: OutputFormat = Query(OutputFormat.PNG),
                    quality: int = Query(90, ge=1, le=100)) -> Response:
    job = await jobs_of(request).job(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}")
    image = await asyncio.to_thread(render, request.app.state.settings.home, job, index, format, quality,
                                    request.app.state.files)
    if image is None:
        raise HTTPException(404, f"job {job_id} has no output image {index} (it has {len(job.images())})")
    _, headers = served_file(image.filename)
    return Response(image.data, media_type=image.media_type, headers=headers)
