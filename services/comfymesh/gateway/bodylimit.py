"""Refuse request bodies that declare more than the limit, before anything reads them (413, ComfyUI's shape).

Pure ASGI (not BaseHTTPMiddleware): it adds nothing to the requests it lets through. Bodies that
declare no length are checked where they are read (`api_v1.read_json_body`, uploads).
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            declared = dict(scope["headers"]).get(b"content-length", b"")
            if declared.isdigit() and int(declared) > self.limit:
                await self._refuse(send)
                return
        await self.app(scope, receive, send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"error": {"type": "request_too_large", "message": "Request body too large",
                                     "details": f"the limit is {self.limit} bytes (COMFYMESH_MAX_BODY_BYTES)",
                                     "extra_info": {}}, "node_errors": {}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
