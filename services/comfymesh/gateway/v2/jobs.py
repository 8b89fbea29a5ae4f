"""Comfy API v2 jobs: submit (with `core/ASSET` references), list (cursor pages), get (the truth), cancel, workflow."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import uuid
from typing import Any

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import ValidationError

from comfymesh.contracts.events import JobStatus
from comfymesh.contracts.job_order import JobOrder
from comfymesh.gateway.engine import Job, JobQuery, NewJob
from comfymesh.gateway.request_io import jobs_of, principal_of, read_json_body
from comfymesh.gateway.v2 import views
from comfymesh.gateway.v2.asset_store import AssetStore
from comfymesh.gateway.v2.context import output_max_age_s, queue_position, store_of
from comfymesh.gateway.v2.errors import V2Error
from comfymesh.gateway.v2.schemas import ErrorEnvelope, JobList, JobSubmission, JobWorkflow
from comfymesh.gateway.v2.schemas import Job as JobModel
from comfymesh.gateway.v2.views import V2Status

router = APIRouter(tags=["jobs"])
_IDS = uuid.UUID("0d6f0b0e-2a43-4c3e-9d55-5a1a86f1d0c2")  # namespace of job ids made from idempotency keys
MAX_LABELS, MAX_LABEL_KEY, MAX_LABEL_VALUE = 16, 64, 256
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorEnvelope, "description": "no such job"}}
SUBMIT_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorEnvelope, "description": "not JSON, or a malformed Idempotency-Key (`invalid_request`)"},
    413: {"model": ErrorEnvelope, "description": "the body or the prompt is over the size limit"},
    415: {"model": ErrorEnvelope, "description": "a JSON body sent as text/plain"},
    422: {"model": ErrorEnvelope, "description": "`invalid_workflow` (with `details.node_errors`), "
                                                 "`workflow_format_ui`, `missing_asset`, `idempotency_key_reuse`, "
                                                 "`metadata_invalid`, `invalid_request`"},
    429: {"model": ErrorEnvelope, "description": "`queue_full`: retry after Retry-After"},
    503: {"model": ErrorEnvelope, "description": "the orchestrator does not answer: retry shortly"}}


def _not_found(job_id: str) -> V2Error:
    return V2Error(404, "not_found", f"no job {job_id[:200]!r}")


async def job_answer(request: Request, job: Job, status: str | None = None) -> dict[str, Any]:
    """The job as GET /api/v2/jobs/{id} shows it (outputs hashed off the loop on first sight)."""
    store: AssetStore = store_of(request)
    found = await asyncio.to_thread(views.outputs, store, job, views.origin(request))
    position = await queue_position(jobs_of(request), job)
    return views.job_body(job, found, position, output_max_age_s(request), status)


def resolve_assets(workflow: dict[str, Any], store: AssetStore, principal: str) -> dict[str, Any]:
    """The workflow with each `core/ASSET` input replaced by the file it names (LoadImage's value); 422
    `missing_asset` naming every reference that names no asset of the caller's."""
    missing: list[str] = []
    resolved: dict[str, Any] = {}
    for node_id, node in workflow.items():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict):
            resolved[node_id] = node
            continue
        new_inputs = dict(inputs)
        for name, value in inputs.items():
            if not (isinstance(value, dict) and value.get("__type") == "core/ASSET"):
                continue
            info = value.get("info")
            asset_id = info.get("id") if isinstance(info, dict) else None
            record = store.get(asset_id, principal) if isinstance(asset_id, str) else None
            if record is None:
                missing.append(str(asset_id)[:100] if asset_id is not None else f"{node_id}.{name}: no info.id")
                continue
            new_inputs[name] = record.load_image_value()
        resolved[node_id] = {**node, "inputs": new_inputs}
    if missing:
        raise V2Error(422, "missing_asset", f"core/ASSET reference(s) that name no asset of yours: "
                                            f"{', '.join(missing)}; upload with POST /api/v2/assets first",
                      {"missing_ids": missing})
    return resolved


def _labels(submission: JobSubmission) -> dict[str, str]:
    labels = submission.metadata or {}
    if len(labels) > MAX_LABELS:
        raise V2Error(422, "metadata_invalid", f"metadata has {len(labels)} pairs; at most {MAX_LABELS}")
    for key, value in labels.items():
        if not key or len(key) > MAX_LABEL_KEY or len(value) > MAX_LABEL_VALUE:
            raise V2Error(422, "metadata_invalid", f"metadata key {key[:80]!r}: keys are 1 to {MAX_LABEL_KEY} "
                                                   f"characters, values at most {MAX_LABEL_VALUE}")
    return labels


def job_id_for(key: str | None, principal: str) -> str:
    """The job id an Idempotency-Key stands for (a second submit with it finds the job); "" without one."""
    if key is None:
        return ""
    if not (1 <= len(key) <= 255) or not key.isascii() or not key.isprintable():
        raise V2Error(400, "invalid_request", "Idempotency-Key must be 1 to 255 printable ASCII characters")
    return str(uuid.uuid5(_IDS, f"{principal}\n{key}"))


@router.post("/jobs", status_code=201, response_model=JobModel, responses=SUBMIT_ERRORS,
             summary="Submit an API-format workflow",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": JobSubmission.model_json_schema()}}}})
async def submit_job(request: Request, response: Response,
                     idempotency_key: str | None = Header(None, description="single-use: 1 to 255 printable "
                                                                            "ASCII characters")) -> Any:
    body = await read_json_body(request)
    try:
        submission = JobSubmission.model_validate(body)
    except ValidationError as exc:
        if not (isinstance(body, dict) and isinstance(body.get("workflow"), dict)):
            raise V2Error(422, "invalid_workflow", "the body needs `workflow`: an API-format graph "
                                                   "({node_id: {class_type, inputs}})") from None
        raise V2Error(422, "invalid_request", "the body does not match the job submission schema",
                      {"errors": json.loads(exc.json(include_url=False, include_input=False))}) from None
    workflow = submission.workflow
    if all(key in workflow for key in ("nodes", "links")):
        raise V2Error(422, "workflow_format_ui", "this is a UI-format (editor) workflow: export it in API format "
                                                 "(Workflow > Export (API)) and submit that")
    if set(submission.extra_data or {}) - {"api_key_comfy_org"}:
        raise V2Error(400, "invalid_request", "extra_data takes only `api_key_comfy_org`")
    labels = _labels(submission)
    principal = principal_of(request)
    job_id = job_id_for(idempotency_key, principal)
    prompt = resolve_assets(workflow, store_of(request), principal)
    jobs = jobs_of(request)
    result = await jobs.submit(NewJob(prompt, {views.METADATA_KEY: labels} if labels else {}, job_id=job_id,
                                      user=principal))
    if result.existing:
        raise V2Error(422, "idempotency_key_reuse", "this Idempotency-Key was used already (keys are single-use): "
                                                    "poll or list your jobs instead of resubmitting",
                      {"job_id": result.job_id})
    if not result.accepted:
        refusal = result.refusal()
        message = str(refusal.get("error", {}).get("message") or "the workflow is not valid")
        details = str(refusal.get("error", {}).get("details") or "")
        raise V2Error(422, "invalid_workflow", message + (f": {details}" if details else ""),
                      {"node_errors": refusal.get("node_errors") or {}})
    job = await jobs.job(result.job_id)
    if job is None:  # deleted at once: what was accepted is still the answer
        job = Job(job_id=result.job_id, status=JobStatus.QUEUED, number=result.number, prompt=prompt)
    response.headers["Location"] = views.urls(result.job_id)["self"]
    return await job_answer(request, job)


def _cursor(offset: int, total: int) -> str:
    return base64.urlsafe_b64encode(json.dumps([offset, total]).encode()).decode().rstrip("=")


def _read_cursor(cursor: str) -> tuple[int, int]:
    """(offset, total when the first page was read): newer jobs push older ones down by the growth since."""
    try:
        offset, total = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if isinstance(offset, int) and isinstance(total, int) and 0 <= offset <= 10**9 and 0 <= total <= 10**9:
            return offset, total
    except (ValueError, TypeError, binascii.Error):
        pass
    raise V2Error(400, "invalid_cursor", "cursor is not one this server issued: pass `next_cursor` as it came")


# `metadata[<key>]=<value>` (the contract's deepObject filter): documented here, read from the raw query
METADATA_FILTER = {"name": "metadata", "in": "query", "required": False, "style": "deepObject", "explode": True,
                   "description": "keep the jobs whose labels include every pair: `metadata[client]=acme`",
                   "schema": {"type": "object", "additionalProperties": {"type": "string"}}}
_SCAN_PAGES = 20  # a filtered page reads at most this many store pages; the cursor goes on from where it stopped


def metadata_filter(request: Request) -> dict[str, str]:
    """The `metadata[key]=value` pairs of the query, checked as labels are at submit."""
    pairs: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if not name.startswith("metadata"):
            continue
        key = name[len("metadata["):-1] if name.startswith("metadata[") and name.endswith("]") else ""
        if not key or len(key) > MAX_LABEL_KEY or len(value) > MAX_LABEL_VALUE or key in pairs:
            raise V2Error(400, "invalid_metadata_filter",
                          f"{name[:80]!r}: filter as metadata[<key>]=<value>, each key once, keys 1 to "
                          f"{MAX_LABEL_KEY} characters, values at most {MAX_LABEL_VALUE}")
        pairs[key] = value
    if len(pairs) > MAX_LABELS:
        raise V2Error(400, "invalid_metadata_filter", f"{len(pairs)} metadata filters; at most {MAX_LABELS}")
    return pairs


def _labelled(job: Job, wanted: dict[str, str]) -> bool:
    labels = views.metadata(job) or {}
    return all(labels.get(key) == value for key, value in wanted.items())


@router.get("/jobs", response_model=JobList, response_model_exclude_none=True, summary="Jobs, newest first",
            openapi_extra={"parameters": [METADATA_FILTER]},
            responses={400: {"model": ErrorEnvelope,
                             "description": "`invalid_cursor`, `invalid_metadata_filter` or an unknown status"}})
async def list_jobs(request: Request, limit: int = Query(50, ge=1, le=100),
                    cursor: str | None = Query(None, max_length=200),
                    status: str | None = Query(None, max_length=200,
                                               description="comma-separated statuses, e.g. `queued,running`")) -> Any:
    wanted = metadata_filter(request)
    statuses: list[str] = []
    for name in (status or "").split(","):
        name = name.strip()
        if not name:
            continue
        if name not in set(V2Status):
            raise V2Error(400, "invalid_request", f"unknown status {name[:40]!r}")
        if name in views.OURS:
            statuses.append(views.OURS[V2Status(name)])
    if status and not statuses:  # only statuses no job of ours is ever in (canceling, expired)
        return {"jobs": []}
    offset, first_total = _read_cursor(cursor) if cursor else (0, -1)
    jobs = jobs_of(request)

    def query(at: int) -> JobQuery:
        return JobQuery(statuses=tuple(statuses), order=JobOrder.NEWEST, offset=at, limit=limit)

    page = await jobs.page(query(offset))
    if first_total >= 0 and page.total > first_total:  # jobs submitted since the first page: skip past them
        offset += page.total - first_total
        page = await jobs.page(query(offset))
    found = [job for job in page.jobs if _labelled(job, wanted)]
    offset += len(page.jobs)
    # a filtered page reads on until it is full (the labels live in each job's extra data), within bounds
    for _ in range(_SCAN_PAGES - 1):
        if not wanted or len(found) >= limit or not page.has_more:
            break
        page = await jobs.page(query(offset))
        found += [job for job in page.jobs if _labelled(job, wanted)]
        offset += len(page.jobs)
    body: dict[str, Any] = {"jobs": [views.summary(job) for job in found[:limit]]}
    if len(found) > limit:  # the rest of the last store page comes again on the next one
        offset -= len(page.jobs) - page.jobs.index(found[limit])
    if len(found) > limit or page.has_more:  # the total now: the next page counts what was submitted after
        body["next_cursor"] = _cursor(offset, page.total)
    return body


@router.get("/jobs/{job_id}", response_model=JobModel, responses=NOT_FOUND,
            summary="A job: status, progress, outputs, error (the truth: poll it)")
async def get_job(job_id: str, request: Request) -> Any:
    job = await jobs_of(request).job(job_id)
    if job is None:
        raise _not_found(job_id)
    return await job_answer(request, job)


@router.post("/jobs/{job_id}/cancel", response_model=JobModel, responses=NOT_FOUND,
             summary="Cancel a job, queued or running (idempotent; a running job reads `canceling` until it stops)")
async def cancel_job(job_id: str, request: Request) -> Any:
    job = await jobs_of(request).cancel(job_id)
    if job is None:
        raise _not_found(job_id)
    return await job_answer(request, job, "canceling" if job.status == JobStatus.RUNNING else None)


@router.get("/jobs/{job_id}/workflow", response_model=JobWorkflow, responses=NOT_FOUND,
            summary="The API-format workflow the job ran")
async def job_workflow(job_id: str, request: Request) -> Any:
    job = await jobs_of(request).job(job_id)
    if job is None:
        raise _not_found(job_id)
    return {"workflow": job.prompt, "format": "api"}
