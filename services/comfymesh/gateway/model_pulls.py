"""`POST /v1/models/pull` downloads a model file into a model folder in the background (comfymesh.model_pull:
allowed hosts, outbound policy, resume, SHA-256, limits); `GET /v1/models/pulls/{id}` tells how far it got."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from comfymesh.catalog.model_folders import canonical, model_folders
from comfymesh.config import Settings
from comfymesh.gateway.models import Problem
from comfymesh.gateway.problems import problem_response
from comfymesh.model_pull import PullError, PullPolicy, PullState, check_sha256, file_name, pull
from comfymesh.outbound import OutboundPolicy, OutboundRefused

router = APIRouter(prefix="/v1", tags=["models"])


class PullRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048, description="http(s) URL of a .safetensors file on an allowed host "
                                                  "(COMFYMESH_MODEL_PULL_HOSTS)")
    folder: str = Field("checkpoints", max_length=64, description="model folder: checkpoints, loras, vae, ...")
    sha256: str | None = Field(None, description="the file's SHA-256 (64 hex digits), checked before it is kept")
    name: str | None = Field(None, max_length=200, description="file name (default: the URL's last part)")


class PullView(BaseModel):
    id: str
    url: str
    folder: str
    name: str
    state: PullState
    received: int = Field(description="bytes of the file so far")
    total: int | None = Field(description="the file's size, when the server says")
    error: str = ""


@dataclass
class _Pull:
    view: PullView
    task: asyncio.Task[Any] | None = field(default=None, repr=False)


def _pulls(request: Request) -> dict[str, _Pull]:
    state = request.app.state
    if not hasattr(state, "model_pulls"):
        state.model_pulls = {}
    return state.model_pulls  # type: ignore[no-any-return]


def _policy(settings: Settings) -> PullPolicy:
    return PullPolicy(OutboundPolicy.parse(settings.outbound_allow), settings.model_pull_host_list(),
                      settings.model_pull_max_bytes, settings.model_pull_timeout_s)


@router.post("/models/pull", status_code=202, response_model=PullView, summary="Download a model file",
             responses={400: {"model": Problem}, 422: {"model": Problem}})
async def start_pull(body: PullRequest, request: Request) -> Any:
    settings: Settings = request.app.state.settings
    folder = canonical(body.folder)
    if folder is None:
        return problem_response(400, f"{body.folder!r} is not a model folder", instance=request.url.path)
    policy = _policy(settings)
    try:
        name = file_name(body.url, body.name)
        sha256 = check_sha256(body.sha256)
        policy.check_host(policy.outbound.check_url(body.url))  # refused before anything is started
    except (PullError, OutboundRefused) as exc:
        return problem_response(400, str(exc), instance=request.url.path)
    pulls = _pulls(request)
    for existing in pulls.values():  # the same file already on its way: that pull
        if existing.view.state == PullState.RUNNING and (existing.view.folder, existing.view.name) == (folder, name):
            return JSONResponse(existing.view.model_dump(), status_code=202)
    view = PullView(id=secrets.token_hex(8), url=body.url, folder=folder, name=name, state=PullState.RUNNING, received=0,
                    total=None)
    entry = pulls[view.id] = _Pull(view)
    target = model_folders(settings).roots(folder)[0]  # <home>/models/<folder>

    def progress(received: int, total: int | None) -> None:
        view.received, view.total = received, total

    async def run() -> None:
        try:
            path = await pull(body.url, target, policy, name=name, sha256=sha256, progress=progress)
            view.received = view.total = path.stat().st_size
            view.state = PullState.DONE
        except (PullError, OutboundRefused, httpx.HTTPError, OSError) as exc:
            view.state, view.error = PullState.FAILED, str(exc) or type(exc).__name__

    entry.task = asyncio.create_task(run())
    return JSONResponse(view.model_dump(), status_code=202)


@router.get("/models/pulls/{pull_id}", response_model=PullView, responses={404: {"model": Problem}},
            summary="How far a model download got")
async def pull_status(pull_id: str, request: Request) -> PullView:
    entry = _pulls(request).get(pull_id)
    if entry is None:
        raise HTTPException(404, f"no model pull {pull_id!r}")
    return entry.view
