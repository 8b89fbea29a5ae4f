"""The answer a middleware sends when it refuses a request before any route runs, HTTP or websocket alike."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from starlette.types import Scope, Send

from comfymesh.gateway.problems import problem_or_legacy


async def refuse(scope: Scope, send: Send, status: int, body: dict[str, Any],
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """A JSON answer (a problem on /v1, `body` as is elsewhere); a websocket upgrade gets the same HTTP answer
    where the server can send one, else a policy-violation close (the client then sees the handshake fail)."""
    shaped, media_type = problem_or_legacy(scope.get("path", ""), status, body)
    payload = json.dumps(shaped).encode()
    all_headers = [(b"content-type", media_type.encode()), (b"content-length", str(len(payload)).encode()),
                   *(headers or [])]
    if scope["type"] == "websocket":
        if "websocket.http.response" in (scope.get("extensions") or {}):
            await send({"type": "websocket.http.response.start", "status": status, "headers": all_headers})
            await send({"type": "websocket.http.response.body", "body": payload})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": HTTPStatus(status).phrase})
        return
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": payload})
