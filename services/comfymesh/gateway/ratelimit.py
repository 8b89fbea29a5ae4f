"""Per-client rate limit on requests that change state (submits, uploads, cancels): a token bucket per
principal (the authenticated user or token), or per client address when auth is off."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from comfymesh.contracts.comfy_errors import error_body
from comfymesh.gateway.refusal import refuse

_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimitMiddleware:
    """`per_minute` requests per client, with bursts up to `burst`; 429 with Retry-After beyond."""

    def __init__(self, app: ASGIApp, per_minute: int, burst: int) -> None:
        self.app = app
        self.rate = per_minute / 60.0
        self.burst = float(max(burst, 1))
        self.buckets: dict[str, _Bucket] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _MUTATING or self.rate <= 0:
            await self.app(scope, receive, send)
            return
        principal = scope.get("state", {}).get("principal")
        client = scope.get("client") or ("", 0)
        key = f"user:{principal}" if principal else f"addr:{client[0]}"
        now = time.monotonic()
        bucket = self.buckets.setdefault(key, _Bucket(self.burst, now))
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            await self.app(scope, receive, send)
            return
        retry = max(1, math.ceil((1 - bucket.tokens) / self.rate))
        await refuse(scope, send, 429, error_body(
            "rate_limited", "Too many requests",
            "this client is over COMFYMESH_RATE_LIMIT_PER_MIN; retry after Retry-After seconds"),
            [(b"retry-after", str(retry).encode())])
