"""ComfyUI's informational routes: node definitions, system stats, feature flags, model folders, file lists."""

from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from comfymesh.gateway.comfy.features import server_features
from comfymesh.gateway.engine import OrchestratorUnavailable
from comfymesh.gateway.request_io import catalog_of

router = APIRouter(include_in_schema=False)
internal_router = APIRouter(include_in_schema=False)

FRONTEND_VERSION = "1.58.1"


def _memory() -> tuple[int, int]:
    """(total, available) RAM in bytes, from /proc/meminfo where there is one."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        return int(fields["MemTotal"].split()[0]) * 1024, int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return ""


@router.get("/system_stats")
async def system_stats(request: Request) -> dict[str, Any]:
    total, free = _memory()
    devices: list[dict[str, Any]] = []
    try:
        for device in await catalog_of(request).devices():
            devices.append({"name": device.name, "type": device.type, "index": device.index,
                            "vram_total": device.vram_total, "vram_free": device.vram_free,
                            "torch_vram_total": device.torch_vram_total, "torch_vram_free": device.torch_vram_free})
    except OrchestratorUnavailable:
        pass  # the About panel still shows the gateway's own figures
    return {"system": {"os": sys.platform, "ram_total": total, "ram_free": free,
                       "comfyui_version": _version("comfymesh") or "0.0.0",
                       "required_frontend_version": FRONTEND_VERSION,
                       "comfyui_frontend_version": _version("comfyui-frontend-package") or FRONTEND_VERSION,
                       "python_version": sys.version, "pytorch_version": _version("torch"),
                       "embedded_python": False, "argv": list(sys.argv)},
            "devices": devices}


@router.get("/object_info")
async def object_info(request: Request) -> dict[str, Any]:
    return await catalog_of(request).object_info()


@router.get("/object_info/{class_type}")
async def object_info_of(class_type: str, request: Request) -> dict[str, Any]:
    return await catalog_of(request).node_info(class_type)


@router.get("/features")
async def features(request: Request) -> dict[str, Any]:
    return server_features(request.app.state.settings)


def _unknown_folder(folder: str) -> JSONResponse:
    return JSONResponse({"error": f"unknown model folder {folder!r}"}, status_code=404)


@router.get("/embeddings")
async def embeddings(request: Request) -> list[str]:
    return await catalog_of(request).embeddings()


@router.get("/models")
async def model_folders(request: Request) -> list[str]:
    return catalog_of(request).folder_names()


@router.get("/models/{folder}")
async def models_in(folder: str, request: Request) -> Any:
    catalog = catalog_of(request)
    if not catalog.is_folder(folder):
        return _unknown_folder(folder)
    return [f.name for f in await catalog.model_files(folder)]


@router.get("/experiment/models")
async def experiment_models(request: Request) -> list[dict[str, Any]]:
    return [{"name": name, "folders": paths} for name, paths in catalog_of(request).folder_paths().items()]


@router.get("/experiment/models/{folder}")
async def experiment_models_in(folder: str, request: Request) -> Any:
    catalog = catalog_of(request)
    if not catalog.is_folder(folder):
        return _unknown_folder(folder)
    return [{"name": f.name, "pathIndex": 0, "modified": f.modified, "created": f.created, "size": f.size}
            for f in await catalog.model_files(folder)]


@internal_router.get("/internal/folder_paths")
async def folder_paths(request: Request) -> dict[str, list[str]]:
    return catalog_of(request).folder_paths()


@internal_router.get("/internal/files/{directory}")
async def internal_files(directory: str, request: Request) -> Any:
    if directory not in ("input", "output", "temp"):
        return JSONResponse({"error": "Invalid directory type"}, status_code=400)
    root = request.app.state.settings.home / directory
    if not root.is_dir():
        return []
    files = [p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
    return [p.name for p in sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)]


@internal_router.get("/internal/logs/raw")
async def logs_raw() -> dict[str, Any]:
    # each service logs to its own stream; the frontend's terminal panel gets an empty log
    return {"entries": [], "size": {"cols": 80, "rows": 24}}


@internal_router.patch("/internal/logs/subscribe")
async def logs_subscribe() -> dict[str, Any]:
    return {}
