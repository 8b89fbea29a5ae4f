"""Comfy API v2's error envelope, `{"error": {"code", "message", "details"}}`, for every answer under /api/v2.

Routes raise `V2Error` (or anything the v2 app's exception handlers map); refusals made by the gateway's
middleware before any v2 route runs (auth, browser guard, rate limit, body limit) come out in ComfyUI's or
/v1's shapes, so `V2ErrorShapeMiddleware` rewrites those into the envelope on the way out.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

PREFIX = "/api/v2"

# the contract's code for a status, where nothing more precise is known
CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
         409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type", 416: "range_not_satisfiable",
         422: "invalid_request", 429: "rate_limited", 503: "unavailable"}


class V2Error(Exception):
    """An HTTP error of the v2 API: status, machine-readable code, a sentence, optional details."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details, self.headers = status, code, message, details, headers


def envelope(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


def code_for(status: int) -> str:
    return CODES.get(status, "server_error" if status >= 500 else "invalid_request")


def _is_envelope(body: Any) -> bool:
    return isinstance(body, dict) and isinstance(body.get("error"), dict) and isinstance(body["error"].get("code"), str)


def _message_of(body: Any, raw: bytes, status: int) -> tuple[str, dict[str, Any] | None]:
    """The sentence of another shape's error body: /v1's `detail`, ComfyUI's `error.message` (+ details)."""
    if isinstance(body, dict):
        detail, error = body.get("detail"), body.get("error")
        if isinstance(detail, str) and detail:
            return detail, None
        if isinstance(error, dict) and error.get("message"):
            extra = str(error.get("details") or "")
            return str(error["message"]) + (f": {extra}" if extra else ""), None
        if isinstance(error, str) and error:
            return error, None
        if detail:
            return HTTPStatus(status).phrase, {"errors": detail}
    text = raw.decode("utf-8", "replace").strip()
    return (text[:1000] or HTTPStatus(status).phrase), None


def as_envelope(status: int, body: Any, raw: bytes = b"") -> dict[str, Any]:
    """An error body of any shape (or raw text) in the envelope."""
    if _is_envelope(body):
        return dict(body)
    message, details = _message_of(body, raw, status)
    return envelope(code_for(status), message, details)


def reshaped(status: int, raw: bytes) -> bytes | None:
    """An error body in the envelope, or None when it already is one."""
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    if _is_envelope(body):
        return None
    return json.dumps(as_envelope(status, body, raw)).encode()


class V2ErrorShapeMiddleware:
    """Outermost: an error answer to a /api/v2 request that is not in the envelope yet is rewritten into it
    (headers such as Retry-After and WWW-Authenticate kept). Successful answers (and SSE streams) pass as they
    are, never buffered."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def send_shaped(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start = message
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            raw = b"".join(chunks)
            body = reshaped(start["status"], raw) if scope["method"] != "HEAD" else None
            headers = list(start.get("headers", ()))
            if body is not None:
                headers = [(k, v) for k, v in headers if k.lower() not in (b"content-length", b"content-type")]
                headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": raw if body is None else body})

        await self.app(scope, receive, send_shaped)
