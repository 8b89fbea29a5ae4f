"""Comfy API v2 health: the gateway answers, and whether the orchestrator behind it does."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from comfymesh.gateway.v2.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, summary="Whether this server can take jobs",
            responses={503: {"model": Health, "description": "the orchestrator does not answer, or a "
                                                                "configured stage has no healthy replica"}})
async def health(request: Request) -> Any:
    readiness = await request.app.state.engine.readiness()
    if readiness.ready:
        return Health(status="healthy", orchestrator="ready")
    health = Health(status="degraded", orchestrator="ready" if readiness.orchestrator else "unavailable")
    return JSONResponse(health.model_dump(), status_code=503)
