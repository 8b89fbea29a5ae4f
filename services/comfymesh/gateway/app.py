"""Build the FastAPI application: middleware, error mapping and routers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException

from comfymesh.catalog.model_folders import model_folders
from comfymesh.config import Settings
from comfymesh.contracts.comfy_errors import error_body
from comfymesh.files import files_problem, open_files
from comfymesh.gateway import api_docs, api_v1, cluster, comfy, files, login, model_pulls, v2, workflows
from comfymesh.gateway.auth import Authenticator, AuthMiddleware
from comfymesh.gateway.bodylimit import BodyLimitMiddleware
from comfymesh.gateway.browser import BrowserGuardMiddleware, BrowserPolicy
from comfymesh.gateway.catalog_service import CatalogService
from comfymesh.gateway.client import OrchestratorClient
from comfymesh.gateway.engine import Engine, OrchestratorUnavailable, PromptTooLarge, QueueFull
from comfymesh.gateway.jobs_service import JobService
from comfymesh.gateway.lockout import Lockout
from comfymesh.gateway.metrics import GatewayMetrics, MetricsMiddleware
from comfymesh.gateway.metrics import router as metrics_router
from comfymesh.gateway.models import Health, Problem, ReadinessReport, StageHealth
from comfymesh.gateway.problems import answer, is_v1, problem_response
from comfymesh.gateway.ratelimit import RateLimitMiddleware
from comfymesh.rpc.discovery import make_resolver


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    """The gateway over `engine` (by default, the orchestrator at `settings.orchestrator`, over gRPC)."""
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        used: Engine = engine or OrchestratorClient(settings.orchestrator, make_resolver(settings.hosts_file))
        app.state.engine = used
        app.state.jobs = JobService(used)
        app.state.catalog = CatalogService(used, model_folders(settings))
        yield
        await comfy.shutdown(app)
        await used.close()

    app = FastAPI(title="comfymesh", version="0.1.0", docs_url=None, redoc_url=None,
                  openapi_url="/v1/openapi.json", lifespan=lifespan,
                  # BrowserGuardMiddleware's refusal, which any route may answer
                  responses={403: {"model": Problem, "description": "A page of another site, or a Host name this "
                                                                      "server does not answer to"}},
                  description="Run ComfyUI workflows on a gRPC mesh. ComfyUI's own API is served beside this one.")
    app.state.settings = settings
    # the shared files store (COMFYMESH_FILES_URL); None: the data home's folders
    app.state.files = open_files(settings.files, settings.files_options()) if settings.files_url else None
    app.state.authenticator = authenticator = Authenticator(settings)
    app.state.lockout = lockout = Lockout()  # shared by /login and every other way a token comes in

    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    # inside auth, so the limit is per authenticated principal
    app.add_middleware(RateLimitMiddleware, per_minute=settings.rate_limit_per_min, burst=settings.rate_limit_burst)
    # an unauthenticated request reaches nothing else, HTTP or websocket
    app.add_middleware(AuthMiddleware, authenticator=authenticator, lockout=lockout)
    # added last, so outermost: a foreign page or Host is refused before its credentials are even checked,
    # so it cannot lock the user out by sending wrong ones
    app.add_middleware(BrowserGuardMiddleware, policy=BrowserPolicy(settings))
    app.state.metrics = GatewayMetrics()
    # outermost of all: every request is counted, the guards' refusals too
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)

    # each error is answered in its API's shape: a problem (RFC 9457) on /v1, as before elsewhere
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        body: Any = exc.detail if isinstance(exc.detail, dict) else {"detail": exc.detail}
        return answer(request.url.path, exc.status_code, body, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = jsonable_errors(exc)
        if is_v1(request.url.path):
            return problem_response(422, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors),
                                    code="invalid_request", instance=request.url.path, errors=errors)
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        return answer(request.url.path, 429, error_body("queue_full", "The queue is full",
                                                        "retry after the Retry-After delay"), {"Retry-After": "5"})

    @app.exception_handler(PromptTooLarge)
    async def prompt_too_large(request: Request, exc: PromptTooLarge) -> JSONResponse:
        return answer(request.url.path, 413, error_body("request_too_large", "Prompt too large", str(exc)))

    @app.exception_handler(OrchestratorUnavailable)
    async def unavailable(request: Request, exc: OrchestratorUnavailable) -> JSONResponse:
        return answer(request.url.path, 503, {"detail": f"{exc}; retry shortly"}, {"Retry-After": "2"})

    @app.exception_handler(500)
    async def crashed(request: Request, exc: Exception) -> Response:
        # a bug: Starlette still logs the traceback; /v1 says so as a problem, the rest as Starlette does
        if is_v1(request.url.path):
            return problem_response(500, "the gateway failed on this request; its log has the traceback",
                                    code="internal_error", instance=request.url.path)
        return PlainTextResponse("Internal Server Error", status_code=500)

    @app.get("/healthz", response_model=Health, tags=["health"], summary="The gateway process is alive")
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=ReadinessReport, tags=["health"],
             summary="The orchestrator answers and every configured stage has a healthy replica",
             responses={503: {"model": ReadinessReport, "description": "the orchestrator or a stage is missing"}})
    async def readyz(request: Request) -> Any:
        readiness = await request.app.state.engine.readiness()
        stages = {s.stage: StageHealth(replicas=s.replicas, healthy=s.healthy) for s in readiness.stages}
        store = request.app.state.files
        problem = await asyncio.to_thread(files_problem, store) if store is not None else None
        if readiness.ready and problem is None:
            return ReadinessReport(status="ready", stages=stages)
        status = ("orchestrator unavailable" if not readiness.orchestrator
                  else f"no healthy replica of the {', '.join(readiness.missing)} stage" if not readiness.ready
                  else f"files store unavailable ({problem.code if problem else ''})")
        report = ReadinessReport(status=status, missing=readiness.missing, stages=stages)
        return JSONResponse(report.model_dump(), status_code=503, headers={"Retry-After": "2"})

    app.include_router(login.router)
    app.include_router(metrics_router)
    app.include_router(api_v1.router)
    app.include_router(model_pulls.router)
    api_docs.install(app)
    workflows.install(app)  # saved workflows' routes, OpenAPI entries and page (after the docs)
    cluster.install(app)  # /v1/cluster and its page, /ui/cluster
    app.include_router(files.router)
    comfy.install(app)  # ComfyUI's routes, before the v2 mount: its /api/v2/userdata is ComfyUI's own
    v2.install(app)  # Comfy API v2 at /api/v2
    comfy.install_frontend(app)  # last: the frontend's static mount catches every other path
    return app


def jsonable_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()]
