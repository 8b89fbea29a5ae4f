"""The official ComfyUI web frontend (from its wheel), our workflow templates, and the small routes it needs.

Our templates are offered as the frontend's *core* templates (`/templates/index.json`), which carry
titles, descriptions and thumbnails; `/workflow_templates` lists custom-node packs' templates, and we
have none, so listing ours there as well would show each template twice in the browser.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from comfymesh.catalog.files import resolve_inside

router = APIRouter(include_in_schema=False)
static_router = APIRouter(include_in_schema=False)
TEMPLATES_DIR = Path(__file__).resolve().parents[4] / "ui" / "templates"
_NO_CACHE = {"Cache-Control": "no-cache", "Pragma": "no-cache", "Expires": "0"}


def static_dir() -> Path:
    return Path(str(resources.files("comfyui_frontend_package") / "static"))


class FrontendFiles(StaticFiles):
    """The frontend's static folder; scripts and styles are revalidated so an upgrade shows at once."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if path.endswith((".js", ".css")):
            response.headers["Cache-Control"] = "no-cache"
        return response


@static_router.get("/")
async def index() -> FileResponse:
    return FileResponse(static_dir() / "index.html", headers=_NO_CACHE)


@static_router.get("/templates/{name:path}")
async def template_file(name: str) -> Response:
    path = resolve_inside(TEMPLATES_DIR, name)
    if path is None or not path.is_file():
        return JSONResponse({"error": "no such template"}, status_code=404)
    headers = {"Cache-Control": "no-cache"} if name.endswith(".json") else {}
    return FileResponse(path, headers=headers)


@router.get("/workflow_templates")
async def workflow_templates() -> dict[str, list[str]]:
    return {}


@router.get("/extensions")
async def extensions() -> list[str]:
    # no custom-node web code; the frontend's own core shims are skipped by it anyway (§9.4)
    return []


@router.get("/i18n")
async def i18n() -> dict[str, Any]:
    return {}


@router.get("/global_subgraphs")
async def global_subgraphs() -> dict[str, Any]:
    return {}


@router.get("/global_subgraphs/{subgraph_id}")
async def global_subgraph(subgraph_id: str) -> JSONResponse:
    return JSONResponse({"error": "no such subgraph"}, status_code=404)


@static_router.api_route("/api/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
async def unknown_api_route(rest: str) -> JSONResponse:
    # a JSON 404, never the static mount's text one: the frontend parses every /api body (§3)
    return JSONResponse({"detail": "Not Found"}, status_code=404)


def frontend_files() -> FrontendFiles:
    return FrontendFiles(directory=static_dir(), html=False)
