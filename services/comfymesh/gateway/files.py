"""File routes shared with ComfyUI's API: `/view` serves images from input, output and temp only (§7.1),
each as `stored_files` sends any stored file (inline only for inert media, always sandboxed)."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, RedirectResponse
from PIL import Image

from comfymesh import trace
from comfymesh.catalog.files import resolve_inside
from comfymesh.files import BadKey, FilesStore, LocalFiles, safe_key
from comfymesh.gateway.images import ImageRefused, open_image
from comfymesh.gateway.stored_files import FILE_POLICY, file_response, served_file

router = APIRouter(tags=["files"])
FOLDERS = ("output", "input", "temp")
_ANNOTATIONS = {" [output]": "output", " [input]": "input", " [temp]": "temp"}


def preview_format(preview: str | None, channel: str) -> tuple[str, int] | None:
    """(format, quality) of `preview=<webp|jpeg>;<quality>`; other formats mean webp, as in ComfyUI, and so
    does jpeg when the alpha channel is wanted."""
    if not preview:
        return None
    fmt, _, quality = preview.partition(";")
    fmt = "webp" if fmt not in ("webp", "jpeg") or "a" in channel else fmt
    if not quality:
        return fmt, 90
    if not (quality.isascii() and quality.isdigit() and int(quality) <= 100):
        raise HTTPException(400, f"preview quality must be a whole number from 0 to 100, not {quality[:20]!r}")
    return fmt, int(quality)


def _reencode(path: Path | bytes, shown: str, max_pixels: int, preview: tuple[str, int] | None,
              channel: str) -> tuple[bytes, str]:
    """The `preview=<format>;<quality>` and `channel=rgb|a|rgba` variants of an image."""
    with open_image(path, shown, max_pixels) as opened:
        image: Image.Image = opened
        image.load()
        if channel == "a":
            alpha = image.getchannel("A") if "A" in image.getbands() else Image.new("L", image.size, 255)
            image = Image.merge("RGBA", (*Image.new("RGB", image.size).split(), alpha))
        elif channel == "rgb" or (preview and preview[0] != "webp"):
            image = image.convert("RGB")
        elif image.mode not in ("RGB", "RGBA"):
            image = image.convert("RGBA")
        buffer = io.BytesIO()
        if preview:
            fmt, quality = preview
            image.save(buffer, format=fmt.upper(), quality=quality)
            return buffer.getvalue(), f"image/{fmt}"
        image.save(buffer, format="PNG")
        return buffer.getvalue(), "image/png"


async def _view_stored(request: Request, files: FilesStore, key: str, shown: str, preview: str | None,
                       channel: str) -> Response:
    """/view from a shared store: the object streamed through, or a 307 to a presigned URL
    (COMFYMESH_FILES_VIEW_REDIRECT; the S3 server checks its signature and expiry)."""
    settings = request.app.state.settings
    variant = preview_format(preview, channel)
    plain = variant is None and channel == "rgba"
    if plain and settings.files_view_redirect:
        if not await asyncio.to_thread(files.exists, key):
            raise HTTPException(404, f"{shown} does not exist")
        url = await asyncio.to_thread(files.presign, key, settings.files_presign_ttl_s)
        if url is not None:
            return RedirectResponse(url, status_code=307)
    try:
        content = await asyncio.to_thread(files.read, key)
    except FileNotFoundError:
        raise HTTPException(404, f"{shown} does not exist") from None
    if not plain:
        try:
            content, media_type = await asyncio.to_thread(_reencode, content, shown, settings.max_pixels, variant,
                                                          channel)
        except ImageRefused as exc:
            raise HTTPException(400, f"{exc}; or fetch the file itself, without preview and channel") from None
        return Response(content, media_type=media_type, headers={"Content-Security-Policy": FILE_POLICY})
    media_type, headers = served_file(key.rsplit("/", 1)[-1])
    return Response(content, media_type=media_type, headers=headers)


@router.get("/view", name="view_file", response_class=FileResponse, include_in_schema=False)
@router.get("/api/view", name="api_view_file", response_class=FileResponse, include_in_schema=False)
async def view_file(request: Request, filename: str = Query("", max_length=1024),
                    subfolder: str = Query("", max_length=1024), type: str = Query("output"),
                    preview: str | None = Query(None, max_length=32),
                    channel: str = Query("rgba", pattern="^(rgba|rgb|a)$")) -> Response:
    trace.mark("gateway.view")
    for suffix, folder_type in _ANNOTATIONS.items():
        if filename.endswith(suffix):
            filename, type = filename[: -len(suffix)], folder_type
    if not filename or filename.startswith("/") or ".." in filename or "\x00" in filename:
        raise HTTPException(400, "filename must be a file name inside its folder")
    if type not in FOLDERS:
        raise HTTPException(400, f"type must be one of {', '.join(FOLDERS)}")
    # like ComfyUI, only the base name counts; folders go in `subfolder`
    filename = filename.replace("\\", "/").rsplit("/", 1)[-1]
    shown = f"{type}/{subfolder + '/' if subfolder else ''}{filename}"  # as the client named it
    files: FilesStore | None = request.app.state.files
    if files is not None and not files.local:
        try:
            key = safe_key(type, subfolder, filename)
        except BadKey:
            raise HTTPException(403, "the path leaves its folder") from None
        return await _view_stored(request, files, key, shown, preview, channel)
    home = files.root if isinstance(files, LocalFiles) else request.app.state.settings.home
    folder = home / type
    base = resolve_inside(folder, subfolder) if subfolder else folder.resolve()
    path = resolve_inside(folder, f"{subfolder}/{filename}" if subfolder else filename)
    if base is None or path is None:
        raise HTTPException(403, "the path leaves its folder")
    if not path.is_file():
        raise HTTPException(404, f"{shown} does not exist")
    variant = preview_format(preview, channel)
    if variant or channel != "rgba":
        max_pixels = request.app.state.settings.max_pixels
        try:
            content, media_type = await asyncio.to_thread(_reencode, path, shown, max_pixels, variant, channel)
        except ImageRefused as exc:
            raise HTTPException(400, f"{exc}; or fetch the file itself, without preview and channel") from None
        return Response(content, media_type=media_type, headers={"Content-Security-Policy": FILE_POLICY})
    media_type, headers = served_file(path.name)
    return await file_response(path, media_type, headers=headers)
