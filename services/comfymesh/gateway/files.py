"""File routes shared with ComfyUI's API: `/view` serves images from input, output and temp only (§7.1)."""

from __future__ import annotations

import asyncio
import io
import mimetypes
from pathlib import Path

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse
from PIL import Image

from comfymesh import trace
from comfymesh.catalog.files import resolve_inside

router = APIRouter(tags=["files"])
FOLDERS = ("output", "input", "temp")
_ANNOTATIONS = {" [output]": "output", " [input]": "input", " [temp]": "temp"}
# served as bytes, never as a page or script of this origin
_INERT_TYPES = {"text/html", "application/xhtml+xml", "text/javascript", "application/javascript", "text/css"}


# files up to this size are read in one go (one worker-thread hop) instead of streamed in 64 KiB chunks
_READ_WHOLE_BYTES = 32 * 1024 * 1024
# and up to this size on the loop itself: a just-written output is in the page cache, and reading it
# (~0.1 ms) costs less than the hop to a worker thread and back
_READ_INLINE_BYTES = 1024 * 1024


async def file_response(path: Path, media_type: str, headers: dict[str, str] | None = None) -> Response:
    """A file as the response body: outputs are small, so reading them whole saves a thread hop per chunk."""
    size = path.stat().st_size
    if size > _READ_WHOLE_BYTES:
        return FileResponse(path, media_type=media_type, headers=headers)
    try:
        content = path.read_bytes() if size <= _READ_INLINE_BYTES else await asyncio.to_thread(path.read_bytes)
    except FileNotFoundError:
        raise HTTPException(404, f"{path.name} is gone") from None
    return Response(content, media_type=media_type, headers=headers)


def _reencode(path: Path, preview: str | None, channel: str) -> tuple[bytes, str]:
    """The `preview=<format>;<quality>` and `channel=rgb|a|rgba` variants of an image."""
    with Image.open(path) as opened:
        image: Image.Image = opened
        image.load()
        if channel == "a":
            alpha = image.getchannel("A") if "A" in image.getbands() else Image.new("L", image.size, 255)
            image = Image.merge("RGBA", (*Image.new("RGB", image.size).split(), alpha))
        elif channel == "rgb" or (preview and not preview.startswith("webp")):
            image = image.convert("RGB")
        elif image.mode not in ("RGB", "RGBA"):
            image = image.convert("RGBA")
        buffer = io.BytesIO()
        if preview:
            fmt, _, quality = preview.partition(";")
            fmt = "webp" if fmt not in ("webp", "jpeg") or "a" in channel else fmt
            image.save(buffer, format=fmt.upper(), quality=int(quality) if quality.isdigit() else 90)
            return buffer.getvalue(), f"image/{fmt}"
        image.save(buffer, format="PNG")
        return buffer.getvalue(), "image/png"


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
    home = request.app.state.settings.home
    folder = home / type
    base = resolve_inside(folder, subfolder) if subfolder else folder.resolve()
    path = resolve_inside(folder, f"{subfolder}/{filename}" if subfolder else filename)
    if base is None or path is None:
        raise HTTPException(403, "the path leaves its folder")
    if not path.is_file():
        raise HTTPException(404, f"{type}/{subfolder + '/' if subfolder else ''}{filename} does not exist")
    if preview or channel != "rgba":
        try:
            content, media_type = await asyncio.to_thread(_reencode, path, preview, channel)
        except OSError as exc:
            raise HTTPException(400, f"{filename} is not an image: {exc}") from exc
        return Response(content, media_type=media_type)
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if media_type in _INERT_TYPES:
        media_type = "application/octet-stream"
    return await file_response(path, media_type, headers={"Content-Disposition": f'filename="{path.name}"'})
