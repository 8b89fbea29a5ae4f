"""The gateway's Prometheus metrics: HTTP requests by route template and status, their durations, and those
in progress; served at GET /metrics (behind the same credentials as every other route)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.process_collector import ProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

router = APIRouter(tags=["health"])


class GatewayMetrics:
    """One registry per app, so two apps in one process (tests) count apart."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # memory, CPU seconds, open files
        self.requests = Counter("comfymesh_http_requests", "HTTP requests answered, by route template and status",
                                ["method", "route", "status"], registry=self.registry)
        self.seconds = Histogram("comfymesh_http_request_duration_seconds", "Time to answer an HTTP request "
                                 "(a streamed body until it ends)", ["method", "route"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.in_progress = Gauge("comfymesh_http_requests_in_progress", "HTTP requests being answered",
                                 registry=self.registry)


def route_label(scope: Scope) -> str:
    """The matched route's template (`/v1/jobs/{job_id}`), never the raw path: labels stay few."""
    template = getattr(scope.get("route"), "path", None)
    if template is None:
        return "unmatched"  # refused before routing (auth, guard, limits) or no route: 404
    return f"{scope.get('root_path', '')}{template}" or "/"


class MetricsMiddleware:
    """Counts every HTTP request; outermost, so refusals by the guards are counted too."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # an app that raised before answering
        started = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.in_progress.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_progress.dec()
            route = route_label(scope)
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.seconds.labels(scope["method"], route).observe(time.perf_counter() - started)


@router.get("/metrics", summary="Prometheus metrics of this gateway", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
