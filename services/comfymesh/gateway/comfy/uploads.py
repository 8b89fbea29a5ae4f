"""ComfyUI's `/upload/image` and `/upload/mask`: files into input (or temp/output), never outside (§7.2, §7.3)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from PIL import PngImagePlugin
from starlette.datastructures import FormData, UploadFile

from comfymesh.catalog.files import resolve_inside
from comfymesh.files import BadKey, FilesStore, LocalFiles, safe_key
from comfymesh.gateway.images import ImageRefused, open_image

router = APIRouter(include_in_schema=False)
UPLOAD_FOLDERS = ("input", "temp", "output")


class UploadRefused(Exception):
    """A 400 with a sentence saying which field is wrong."""


def _target(home: Path, form: FormData, filename: str) -> tuple[Path, str, str]:
    """(folder to write in, subfolder, folder type) for the form's `type` and `subfolder`."""
    kind = str(form.get("type") or "input")
    if kind not in UPLOAD_FOLDERS:
        raise UploadRefused(f"type must be one of {', '.join(UPLOAD_FOLDERS)}")
    subfolder = str(form.get("subfolder") or "")
    base = home / kind
    folder = resolve_inside(base, subfolder) if subfolder else base.resolve()
    if folder is None or "/" in filename or "\\" in filename or resolve_inside(folder, filename) is None \
            or filename in (".", ".."):
        raise UploadRefused("the file name or subfolder leaves the upload folder")
    return folder, subfolder, kind


def _place(files: FilesStore, prefix: str, filename: str, content: bytes, overwrite: bool) -> str:
    """Store `content` as `filename` in `files` under `prefix` and return the name it got: identical content
    reuses its file, different content takes `name (n).ext` (ComfyUI's rule). Each name is claimed by the
    store (a link on disk, a conditional write on S3), so two gateways never take one name."""
    if overwrite:
        files.write(prefix + filename, content)
        return filename
    stem, dot, suffix = filename.rpartition(".")
    if not dot:
        stem, suffix = filename, ""
    digest = hashlib.sha256(content).digest()
    name, n = filename, 0
    while not files.claim(prefix + name, content):
        try:
            existing: bytes | None = files.read(prefix + name)
        except FileNotFoundError:
            continue  # deleted since the claim failed: claim it again
        except IsADirectoryError:
            existing = None
        if existing is not None and hashlib.sha256(existing).digest() == digest:
            return name
        n += 1
        name = f"{stem} ({n}){dot}{suffix}"
    return name


def _store(home: Path, files: FilesStore | None, form: FormData, upload: UploadFile,
           content: bytes) -> dict[str, Any]:
    filename = upload.filename or ""
    if not filename:
        raise UploadRefused("the image part has no file name")
    folder, subfolder, kind = _target(home, form, filename)
    overwrite = str(form.get("overwrite") or "").lower() in ("true", "1")
    if files is None or files.local:
        name = _place(LocalFiles(folder), "", filename, content, overwrite)
    else:
        try:
            prefix = safe_key(kind, subfolder, filename).removesuffix(filename)
        except BadKey as exc:
            raise UploadRefused("the file name or subfolder leaves the upload folder") from exc
        name = _place(files, prefix, filename, content, overwrite)
    return {"name": name, "subfolder": subfolder, "type": kind}


def _apply_mask(home: Path, files: FilesStore | None, original_ref: Any, mask: bytes, max_pixels: int) -> bytes:
    """The referenced image with the mask's alpha channel, its PNG text chunks kept."""
    try:
        ref = json.loads(original_ref) if isinstance(original_ref, str) else None
    except ValueError:
        ref = None
    if not isinstance(ref, dict) or not ref.get("filename"):
        raise UploadRefused("original_ref must be JSON naming the image: {filename, subfolder, type}")
    kind = str(ref.get("type") or "input")
    name = "/".join(p for p in (str(ref.get("subfolder") or ""), str(ref["filename"])) if p)
    source: Path | bytes | None
    if files is not None and not files.local:
        try:
            source = files.read(safe_key(kind, "", name)) if kind in UPLOAD_FOLDERS else None
        except (BadKey, FileNotFoundError):
            source = None
    else:
        path = resolve_inside(home / kind, name) if kind in UPLOAD_FOLDERS else None
        source = path if path is not None and path.is_file() else None
    if source is None:
        raise UploadRefused("original_ref names no image in input, temp or output")
    with open_image(source, f"{kind}/{name}", max_pixels) as original:
        info = PngImagePlugin.PngInfo()
        for key, value in original.info.items():
            if isinstance(key, str) and isinstance(value, str):
                info.add_text(key, value)
        result = original.convert("RGBA")
    with open_image(mask, "the uploaded mask", max_pixels) as uploaded:
        result.putalpha(uploaded.convert("RGBA").getchannel("A").resize(result.size))
    buffer = io.BytesIO()
    result.save(buffer, format="PNG", pnginfo=info, compress_level=4)
    return buffer.getvalue()


async def _upload(request: Request, mask: bool) -> Any:
    form = await request.form()
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        return JSONResponse({"error": "no image part in the form"}, status_code=400)
    settings = request.app.state.settings
    files: FilesStore | None = request.app.state.files
    home = files.root if isinstance(files, LocalFiles) else settings.home
    content = await upload.read()
    try:
        if mask:
            content = await asyncio.to_thread(_apply_mask, home, files, form.get("original_ref"), content,
                                              settings.max_pixels)
        return await asyncio.to_thread(_store, home, files, form, upload, content)
    except (UploadRefused, ImageRefused) as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)


@router.post("/upload/image")
async def upload_image(request: Request) -> Any:
    return await _upload(request, mask=False)


@router.post("/upload/mask")
async def upload_mask(request: Request) -> Any:
    return await _upload(request, mask=True)
