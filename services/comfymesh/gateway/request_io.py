"""What every router takes from a request (the services, who asks, a JSON body) and ComfyUI's error answer."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection

from comfymesh.contracts.comfy_errors import error_body
from comfymesh.gateway.catalog_service import CatalogService
from comfymesh.gateway.jobs_service import JobService


def jobs_of(connection: HTTPConnection) -> JobService:
    """The job service of the app serving this request or websocket."""
    return connection.app.state.jobs  # type: ignore[no-any-return]


def catalog_of(connection: HTTPConnection) -> CatalogService:
    return connection.app.state.catalog  # type: ignore[no-any-return]


def principal_of(request: Request) -> str:
    """Who made the request ("" with auth off): the name AuthMiddleware put in the scope."""
    return str(request.scope.get("state", {}).get("principal") or "")


def comfy_error(type_: str, message: str, details: str = "", status: int = 400) -> JSONResponse:
    return JSONResponse(error_body(type_, message, details), status_code=status)


def refuse_plain_text(request: Request) -> None:
    """A JSON body labelled `text/plain` is refused (415): it is what an HTML form or a no-cors fetch of another
    site sends without a CORS preflight, so no browser page of another site gets one in, Origin or not."""
    if request.headers.get("content-type", "").partition(";")[0].strip().lower() == "text/plain":
        raise HTTPException(415, detail=error_body("unsupported_media_type", "A JSON body must not be sent as text/plain",
                                                   "send it with Content-Type: application/json"))


async def read_json_body(request: Request) -> Any:
    """The body as JSON (BodyLimitMiddleware bounds its size), or a ComfyUI-shaped 4xx that says what is wrong."""
    refuse_plain_text(request)
    raw = await request.body()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise HTTPException(400, detail=error_body("invalid_prompt", "Request body is not valid JSON",
                                                   str(exc))) from exc


async def read_optional_json(request: Request) -> dict[str, Any]:
    """A body of options that ComfyUI tolerates empty or not JSON: either means 'no options'."""
    raw = await request.body()
    if raw:
        refuse_plain_text(request)
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) else {}
