"""File routes shared with ComfyUI's API: `/view` serves images from input, output and temp only (§7.1).

Stored files come from users and jobs, so none may act as a page of our origin: raster images and media
are shown inline, everything else (SVG, HTML, XML, ...) is a download; all carry a sandboxing policy.
"""

from __future__ import annotations

import asyncio
import io
import mimetypes
import re
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse
from PIL import Image

from comfymesh import trace
from comfymesh.catalog.files import resolve_inside
from comfymesh.gateway.images import ImageRefused, open_image

router = APIRouter(tags=["files"])
FOLDERS = ("output", "input", "temp")
_ANNOTATIONS = {" [output]": "output", " [input]": "input", " [temp]": "temp"}
# types no browser runs script from, shown inline
INERT_MEDIA = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp", "image/avif",
                         "video/mp4", "video/webm", "audio/mpeg", "audio/wav", "audio/x-wav", "audio/flac",
                         "audio/ogg"})
# text a browser only displays (the frontend loads its user.css from userdata), sent as a download
_PLAIN_TEXT = frozenset({"text/plain", "text/css", "application/json"})
# should a browser open a stored file as a page after all: no script, no plugins, no requests, an opaque origin
FILE_POLICY = "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; sandbox"
_NOT_QUOTABLE = re.compile(r'[^\x20-\x7e]|["\\]')


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


def content_disposition(kind: str, name: str) -> str:
    """`inline` or `attachment` with the file name, any name at all (RFC 6266 with RFC 5987's `filename*`)."""
    fallback = _NOT_QUOTABLE.sub("_", name)
    if fallback == name:
        return f'{kind}; filename="{name}"'
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def served_file(name: str) -> tuple[str, dict[str, str]]:
    """Content type and headers for a stored file called `name`."""
    guessed = mimetypes.guess_type(name)[0] or ""
    inline = guessed in INERT_MEDIA
    media_type = guessed if inline or guessed in _PLAIN_TEXT else "application/octet-stream"
    return media_type, {"Content-Disposition": content_disposition("inline" if inline else "attachment", name),
                        "Content-Security-Policy": FILE_POLICY}


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


def _reencode(path: Path, shown: str, max_pixels: int, preview: tuple[str, int] | None,
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
    shown = f"{type}/{subfolder + '/' if subfolder else ''}{filename}"  # as the client named it
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
