"""Comfy API v2 at /api/v2 (jobs, assets, events, health), over the same job service and mesh as /v1.

A FastAPI app of its own, mounted under the gateway: it has its own OpenAPI document (/api/v2/openapi.json) and
answers every error in v2's envelope, while the gateway's middleware (browser guard, auth, rate and body limits)
runs around it as around every route. It shares the gateway's state (services, settings) by reference.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException  # fastapi's is a subclass; starlette raises its own (routing, forms)

from comfymesh.files import LocalFiles
from comfymesh.gateway.engine import OrchestratorUnavailable, PromptTooLarge, QueueFull
from comfymesh.gateway.v2 import assets, events, health, jobs
from comfymesh.gateway.v2.asset_store import AssetStore
from comfymesh.gateway.v2.errors import PREFIX, V2Error, V2ErrorShapeMiddleware, as_envelope, code_for, envelope
from comfymesh.gateway.v2.schemas import ErrorEnvelope
from comfymesh.gateway.v2.shared_assets import SharedAssetStore

DESCRIPTION = """Comfy API v2, served natively by comfymesh: the contract of Comfy Cloud's API (and of
`comfy-api-proxy`), so `comfy-sdk` works against this server unchanged.

Submit an API-format workflow (`POST /jobs`), poll the job (`GET /jobs/{id}`: the truth), follow its events
(`GET /jobs/{id}/events`, SSE), fetch outputs as assets (`GET /assets/{id}/content`). Upload inputs with
`POST /assets` and reference them in the workflow as `{"__type": "core/ASSET", "info": {"id": ...}}`.
Errors: `{"error": {"code", "message", "details"}}`."""


def _answer(exc: V2Error) -> JSONResponse:
    return JSONResponse(envelope(exc.code, exc.message, exc.details), status_code=exc.status, headers=exc.headers)


def create_v2_app() -> FastAPI:
    app = FastAPI(title="Comfy API v2 (comfymesh)", version="2.0.0", description=DESCRIPTION, docs_url=None,
                  redoc_url=None, openapi_url="/openapi.json",
                  responses={401: {"model": ErrorEnvelope, "description": "credentials missing or wrong"},
                             403: {"model": ErrorEnvelope, "description": "a page of another site, or a Host name "
                                                                          "this server does not answer to"},
                             422: {"model": ErrorEnvelope, "description": "`invalid_request`: a parameter or the "
                                                                          "body does not match the schema"},
                             429: {"model": ErrorEnvelope, "description": "`rate_limited`: retry after Retry-After"}})

    @app.exception_handler(V2Error)
    async def v2_error(request: Request, exc: V2Error) -> JSONResponse:
        return _answer(exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        body = exc.detail if isinstance(exc.detail, dict) else {"detail": exc.detail}
        return JSONResponse(as_envelope(exc.status_code, body), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))} for e in exc.errors()]
        return _answer(V2Error(422, "invalid_request", "the request does not match this route's schema",
                               {"errors": errors}))

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        return _answer(V2Error(429, "queue_full", "the queue is full: retry after Retry-After",
                               headers={"Retry-After": "5"}))

    @app.exception_handler(PromptTooLarge)
    async def too_large(request: Request, exc: PromptTooLarge) -> JSONResponse:
        return _answer(V2Error(413, "payload_too_large", str(exc)))

    @app.exception_handler(OrchestratorUnavailable)
    async def unavailable(request: Request, exc: OrchestratorUnavailable) -> JSONResponse:
        return _answer(V2Error(503, code_for(503), f"{exc}; retry shortly", headers={"Retry-After": "2"}))

    for router in (jobs.router, events.router, assets.router, health.router):
        app.include_router(router)
    return app


def install(app: FastAPI) -> None:
    """Mount /api/v2 on the gateway `app` (before ComfyUI's catch-all mount), sharing its state; its refusal
    shapes are rewritten by a middleware added here, outermost."""
    v2 = create_v2_app()
    v2.state = app.state  # the services the gateway's lifespan puts there, seen by v2's routes
    files = app.state.files  # a shared (s3://) files store holds the assets too, for every gateway
    app.state.v2_assets = SharedAssetStore(app.state.settings.home, files) if files is not None and not files.local \
        else AssetStore(files.root if isinstance(files, LocalFiles) else app.state.settings.home)
    app.mount(PREFIX, v2)
    app.add_middleware(V2ErrorShapeMiddleware)


__all__ = ["create_v2_app", "install"]
