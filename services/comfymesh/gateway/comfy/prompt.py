"""ComfyUI's `/prompt`: queue an API-format prompt (POST) and report the queue length (GET)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from comfymesh.contracts.job_options import STORED_KEY, InvalidJobOptions, requested_options
from comfymesh.gateway.engine import NewJob
from comfymesh.gateway.request_io import comfy_error, jobs_of, principal_of, read_json_body

router = APIRouter(include_in_schema=False)


@router.get("/prompt")
async def queue_info(request: Request) -> dict[str, Any]:
    return {"exec_info": {"queue_remaining": await jobs_of(request).queue_remaining()}}


@router.post("/prompt")
async def queue_prompt(request: Request) -> Any:
    body = await read_json_body(request)
    if not isinstance(body, dict) or "prompt" not in body:
        return comfy_error("no_prompt", "No prompt provided", "No prompt provided")
    extra_data: dict[str, Any] = dict(body["extra_data"]) if isinstance(body.get("extra_data"), dict) else {}
    try:  # our options ride in extra_data.comfymesh (README): taken out here and passed, checked, as fields
        options = requested_options(extra_data.pop(STORED_KEY, None))
    except InvalidJobOptions as exc:
        return comfy_error("invalid_prompt", "Invalid job options", str(exc))
    client_id = body.get("client_id")
    number = body.get("number")
    priority = float(number) if isinstance(number, int | float) and not isinstance(number, bool) else None
    targets = body.get("partial_execution_targets")
    result = await jobs_of(request).submit(NewJob(
        body["prompt"], extra_data, client_id=str(client_id) if client_id else "",
        job_id=str(body["prompt_id"]) if body.get("prompt_id") is not None else "",
        priority=priority, front=bool(body.get("front")),
        targets=[str(t) for t in targets] if isinstance(targets, list) else None, user=principal_of(request),
        **options))
    if not result.accepted:
        return JSONResponse(result.refusal(), status_code=400)
    # ComfyUI answers the number it chose as an int and a caller's number as the float it stored
    answered: float | int = result.number if priority is not None else int(result.number)
    return {"prompt_id": result.job_id, "number": answered, "node_errors": result.node_errors}
