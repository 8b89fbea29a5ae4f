"""How a stored file goes out, from any route that serves one (`/view`, job outputs, user files).

Stored files come from users and jobs, so none may act as a page of our origin: raster images and media
are shown inline, everything else (SVG, HTML, XML, ...) is a download; all carry a sandboxing policy.
"""

from __future__ import annotations

import asyncio
import mimetypes
import re
from pathlib import Path
from urllib.parse import quote

from fastapi import HTTPException, Response
from fastapi.responses import FileResponse

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
