"""Refuse request bodies over the limit (413, ComfyUI's shape): at once when Content-Length declares too much,
and for a chunked body as soon as the bytes received pass the limit, which then stops reading it.

Pure ASGI (not BaseHTTPMiddleware): it adds nothing to the requests it lets through but a byte count.
"""

from __future__ import annotations

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from comfymesh.contracts.comfy_errors import error_body
from comfymesh.gateway.refusal import refuse


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, send)
            return
        received = 0
        answered = refused = False

        async def receive_limited() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # the route sees the client leave, so it stops reading; what it already read is dropped
                    refused = True
                    if not answered:
                        await self._refuse(scope, send)
                    return {"type": "http.disconnect"}
            return message

        async def send_unless_refused(message: Message) -> None:
            nonlocal answered
            if refused:
                return  # the 413 went out: the route's own answer to a cut-off body goes nowhere
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive_limited, send_unless_refused)
        except ClientDisconnect:
            if not refused:
                raise

    async def _refuse(self, scope: Scope, send: Send) -> None:
        await refuse(scope, send, 413, error_body(
            "request_too_large", "Request body too large",
            f"the limit is {self.limit} bytes (COMFYMESH_MAX_BODY_BYTES); send a smaller body"))
