"""ComfyUI's users, settings and user files, stored per user under `<home>/user/<user>/` (§9.6–9.8)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from comfymesh.catalog.files import resolve_inside
from comfymesh.gateway.request_io import read_json_body
from comfymesh.gateway.stored_files import file_response, served_file

router = APIRouter(include_in_schema=False)
SETTINGS_FILE = "comfy.settings.json"
DEFAULT_USER = "default"
_USER_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")
_settings_lock = threading.Lock()


def _error(status: int, message: str) -> JSONResponse:
    # JSON bodies always: the frontend parses error bodies of these routes (§3)
    return JSONResponse({"error": message}, status_code=status)


def user_root(request: Request) -> Path:
    """The requesting user's folder. Single-user server: a missing or unusable Comfy-User is `default`."""
    user = request.headers.get("comfy-user", "")
    return request.app.state.settings.home / "user" / (user if _USER_ID.match(user) else DEFAULT_USER)


def _flag(request: Request, name: str, default: bool) -> bool:
    value = request.query_params.get(name)
    return default if value is None else value.lower() in ("true", "1", "yes")


# users ---------------------------------------------------------------------------------------------
@router.get("/users")
async def users(request: Request) -> dict[str, Any]:
    return {"storage": "server", "migrated": user_root(request).is_dir()}


@router.post("/users")
async def create_user(request: Request) -> Any:
    body = await read_json_body(request)
    name = str(body.get("username", "")).strip() if isinstance(body, dict) else ""
    if not name:
        return _error(400, "username not provided")
    user_id = re.sub(r"[^A-Za-z0-9_]", "", name) + "_" + uuid.uuid4().hex
    (request.app.state.settings.home / "user" / user_id).mkdir(parents=True, exist_ok=False)
    return user_id


# settings ------------------------------------------------------------------------------------------
def _read_settings(root: Path) -> dict[str, Any]:
    path = root / SETTINGS_FILE
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _update_settings(root: Path, changes: dict[str, Any]) -> None:
    with _settings_lock:  # read-modify-write: two quick POSTs must not lose one another's keys
        merged = _read_settings(root) | changes
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{SETTINGS_FILE}.{uuid.uuid4().hex}"
        tmp.write_text(json.dumps(merged, indent=2))
        tmp.replace(root / SETTINGS_FILE)


@router.get("/settings")
async def get_settings(request: Request) -> dict[str, Any]:
    return await asyncio.to_thread(_read_settings, user_root(request))


@router.get("/settings/{setting_id}")
async def get_setting(setting_id: str, request: Request) -> Any:
    return JSONResponse((await asyncio.to_thread(_read_settings, user_root(request))).get(setting_id))


@router.post("/settings")
async def post_settings(request: Request) -> Response:
    body = await read_json_body(request)
    if not isinstance(body, dict):
        return _error(400, "settings must be a JSON object")
    await asyncio.to_thread(_update_settings, user_root(request), body)
    return Response(status_code=200)


@router.post("/settings/{setting_id}")
async def post_setting(setting_id: str, request: Request) -> Response:
    await asyncio.to_thread(_update_settings, user_root(request), {setting_id: await read_json_body(request)})
    return Response(status_code=200)


# user files ----------------------------------------------------------------------------------------
def _inside(root: Path, name: str) -> Path | None:
    """A user file path, or None when it leaves the user folder or names a reserved (`__`) entry."""
    if not name or any(part.startswith("__") for part in name.split("/")):
        return None
    return resolve_inside(root, name)


def _info(root: Path, path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"path": path.relative_to(root.resolve()).as_posix(), "size": stat.st_size,
            "modified": stat.st_mtime, "created": stat.st_ctime}


@router.get("/userdata")
async def list_userdata(request: Request, dir: str = "") -> Any:
    if not dir:
        return _error(400, "Directory not provided")
    root = user_root(request)
    folder = _inside(root, dir)
    if folder is None:
        return _error(403, "the directory leaves the user folder")
    if not folder.is_dir():
        return _error(404, "Directory not found")
    recurse, full, split = (_flag(request, n, False) for n in ("recurse", "full_info", "split"))
    files = sorted(p for p in (folder.rglob("*") if recurse else folder.iterdir()) if p.is_file()
                   and resolve_inside(folder, p.relative_to(folder).as_posix()) is not None)
    if full:
        return [{**_info(folder, p)} for p in files]
    names = [p.relative_to(folder).as_posix() for p in files]
    if split:
        return [[name, *name.split("/")] for name in names]
    return names


@router.get("/v2/userdata")
async def list_userdata_v2(request: Request, path: str = "") -> Any:
    root = user_root(request)
    if not root.is_dir():
        return []
    folder = _inside(root, path) if path else root.resolve()
    if folder is None:
        return _error(400, "the path leaves the user folder")
    if not folder.exists():
        return _error(404, "Path not found")
    if not folder.is_dir():
        return _error(400, "Path is not a directory")
    base = root.resolve()
    entries = sorted(folder.rglob("*"), key=lambda p: (not p.is_dir(), p.relative_to(folder).as_posix().lower()))
    out: list[dict[str, Any]] = []
    for entry in entries:
        rel = entry.relative_to(base).as_posix()
        if resolve_inside(base, rel) is None:
            continue
        item: dict[str, Any] = {"name": entry.name, "path": rel, "type": "directory" if entry.is_dir() else "file"}
        if entry.is_file():
            item |= {"size": entry.stat().st_size, "modified": entry.stat().st_mtime}
        out.append(item)
    return out


def _file_args(request: Request) -> list[str] | None:
    """The `{file}` (and `{dest}`) segments from the raw path: clients encode '/' in them as %2F (§1.4)."""
    raw = request.scope.get("raw_path", request.url.path.encode()).decode("latin-1").split("?", 1)[0]
    tail = raw.split("/userdata/", 1)[1] if "/userdata/" in raw else ""
    parts = tail.split("/")
    if len(parts) not in (1, 3) or (len(parts) == 3 and parts[1] != "move"):
        return None
    names = [unquote(part) for part in (parts[::2])]
    return [unquote(name) if "%" in name else name for name in names]


async def _user_file(request: Request) -> tuple[Path, Path] | JSONResponse:
    args = _file_args(request)
    if args is None or len(args) != 1:
        return _error(404, "Not found")
    root = user_root(request)
    path = _inside(root, args[0])
    return (root, path) if path is not None else _error(403, "the path leaves the user folder")


@router.get("/userdata/{file:path}")
async def get_userdata(request: Request, file: str) -> Any:
    found = await _user_file(request)
    if isinstance(found, JSONResponse):
        return found
    _, path = found
    if not path.is_file():
        return _error(404, "File not found")
    media_type, headers = served_file(path.name)
    return await file_response(path, media_type, headers=headers)


@router.delete("/userdata/{file:path}")
async def delete_userdata(request: Request, file: str) -> Any:
    found = await _user_file(request)
    if isinstance(found, JSONResponse):
        return found
    _, path = found
    if not path.is_file():
        return _error(404, "File not found")
    path.unlink()
    return Response(status_code=204)


@router.post("/userdata/{file:path}")
async def post_userdata(request: Request, file: str) -> Any:
    args = _file_args(request)
    if args is None:
        return _error(404, "Not found")
    root = user_root(request)
    paths = [_inside(root, name) for name in args]
    if any(p is None for p in paths):
        return _error(403, "the path leaves the user folder")
    target = paths[-1]
    assert target is not None
    if target.exists() and not _flag(request, "overwrite", True):
        return _error(409, "File already exists")
    in_the_way = _error(409, "a folder or file of that name is in the way: choose another path")
    if target.is_dir():  # a move would go into it, a write would fail
        return in_the_way
    try:
        if len(paths) == 2:  # POST {file}/move/{dest}
            source = paths[0]
            assert source is not None
            if not source.is_file():
                return _error(404, "Source file not found")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(source, target)
        else:
            body = await request.body()
            target.parent.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(target.write_bytes, body)
    except (NotADirectoryError, FileExistsError):  # a file where a folder of the path should be
        return in_the_way
    if _flag(request, "full_info", False):
        return _info(root, target)
    return JSONResponse(target.relative_to(root.resolve()).as_posix())
