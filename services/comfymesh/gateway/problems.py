"""RFC 9457 problem details: the one error shape of `/v1`, built here alone.

ComfyUI's own routes (/prompt, /history, ...) keep ComfyUI's bodies; `problem_or_legacy` picks by path, so a
middleware that refuses before any route runs answers each API in its own shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi.responses import JSONResponse

MEDIA_TYPE = "application/problem+json"
V1_PREFIX = "/v1/"
TYPE_PREFIX = "urn:comfymesh:problem:"

# the `code` of each status when the raiser names none
_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 409: "conflict", 413: "request_too_large",
                 415: "unsupported_media_type", 422: "invalid_request", 429: "rate_limited",
                 503: "unavailable"}

# every `code` a /v1 problem may carry, with what it means (the OpenAPI description lists them)
CODES: dict[str, str] = {
    "bad_request": "the request is malformed (a header, a path parameter)",
    "invalid_request": "the body or query does not match the documented schema; `errors` lists each field",
    "invalid_prompt": "the workflow failed validation; `node_errors` holds each node's errors as ComfyUI gives them "
                      "(a refused workflow's `code` is ComfyUI's error type, e.g. prompt_outputs_failed_validation)",
    "unauthorized": "no or wrong credentials: send `Authorization: Bearer <token>`",
    "forbidden": "a page of another site, or a Host name this server does not answer to",
    "not_found": "no such job, output or route",
    "method_not_allowed": "the route exists but not with this method",
    "conflict": "the job is not in a state that allows this (e.g. no output yet)",
    "idempotency_conflict": "this Idempotency-Key was used with a different body",
    "request_too_large": "the body is over COMFYMESH_MAX_BODY_BYTES or the control plane's message limit",
    "unsupported_media_type": "a JSON body sent as text/plain",
    "rate_limited": "over COMFYMESH_RATE_LIMIT_PER_MIN, or locked out after wrong tokens; see Retry-After",
    "queue_full": "the queue is at COMFYMESH_MAX_QUEUE; see Retry-After",
    "unavailable": "the orchestrator cannot be reached; see Retry-After",
    "destination_failed": "a saved workflow's job completed but its images could not be written to the requested "
                          "destination; they stay on this server (see `detail`)",
    "internal_error": "a bug in the gateway: its log has the traceback",
}


def is_v1(path: str) -> bool:
    return path.startswith(V1_PREFIX) or path == V1_PREFIX.rstrip("/")


def problem(status: int, detail: str, *, code: str = "", instance: str = "", title: str = "",
            **extensions: Any) -> dict[str, Any]:
    """A problem body: `type` is `urn:comfymesh:problem:<code>`, `code` repeats its last part for clients that
    switch on a short name; extensions (errors, node_errors, ...) sit beside the standard members."""
    code = code or _STATUS_CODES.get(status, "error")
    return {"type": TYPE_PREFIX + code, "title": title or HTTPStatus(status).phrase, "status": status,
            "detail": detail, "instance": instance, "code": code,
            **{key: value for key, value in extensions.items() if value is not None}}


def problem_response(status: int, detail: str, *, code: str = "", instance: str = "", title: str = "",
                     headers: Mapping[str, str] | None = None, **extensions: Any) -> JSONResponse:
    return JSONResponse(problem(status, detail, code=code, instance=instance, title=title, **extensions),
                        status_code=status, headers=headers, media_type=MEDIA_TYPE)


def from_legacy(status: int, body: Any, instance: str) -> dict[str, Any]:
    """The problem for a body in one of the older shapes (`{"detail": ...}` or ComfyUI's `{"error": {...}}`), so a
    refusal written once for both APIs reads as a problem on /v1."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        message, details = str(error.get("message", "")), str(error.get("details", ""))
        return problem(status, f"{message}: {details}" if details else message, code=str(error.get("type") or ""),
                       instance=instance, title=message or "", node_errors=body.get("node_errors") or None)
    detail = body.get("detail") if isinstance(body, dict) else body
    return problem(status, detail if isinstance(detail, str) else HTTPStatus(status).phrase, instance=instance,
                   errors=detail if isinstance(detail, list) else None)


def problem_or_legacy(path: str, status: int, body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(body, media type) of a refusal on `path`: a problem on /v1, the body as given elsewhere."""
    if is_v1(path):
        return from_legacy(status, body, path), MEDIA_TYPE
    return body, "application/json"


def answer(path: str, status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None) -> JSONResponse:
    """An error response on `path`, shaped for its API (see `problem_or_legacy`)."""
    shaped, media_type = problem_or_legacy(path, status, body)
    return JSONResponse(shaped, status_code=status, headers=headers, media_type=media_type)
