"""A run's input images, however they come (an upload's name, base64, a URL), as the file LoadImage reads.

Bytes a request brings are checked to be an image within the pixel limit (from the header, before any
decode) and stored once per content under `input/workflow_inputs/`; URLs are fetched through the
outbound-request policy, so loopback, private and link-local hosts and redirects are refused.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from dataclasses import dataclass
from pathlib import Path

import httpx

from comfymesh.files import FilesStore
from comfymesh.gateway.images import ImageRefused, open_image
from comfymesh.gateway.workflows.declaration import ImageInput
from comfymesh.outbound import OutboundClient, OutboundPolicy, OutboundRefused

FOLDER = "workflow_inputs"  # under input/
_SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tiff"}


class InputRefused(ValueError):
    """An input image that cannot be used; the message names the input and says what to do (a 4xx)."""


@dataclass(frozen=True)
class ImageSources:
    """Where input images go and how URL inputs are fetched."""

    input_folder: Path
    policy: OutboundPolicy
    max_bytes: int
    timeout_s: float
    max_pixels: int
    # a shared (s3://) files store keeps the inputs instead of input_folder
    files: FilesStore | None = None


def _decode_base64(name: str, text: str) -> bytes:
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputRefused(f"input {name!r}: base64 is not valid base64") from None


async def _download(name: str, url: str, sources: ImageSources) -> bytes:
    try:
        async with OutboundClient(sources.policy, timeout=sources.timeout_s) as client:
            return await client.get_bytes(url, max_bytes=sources.max_bytes, timeout_s=sources.timeout_s)
    except OutboundRefused as exc:
        raise InputRefused(f"input {name!r}: the URL is refused: {exc}") from None
    except httpx.HTTPError as exc:
        raise InputRefused(f"input {name!r}: the URL could not be fetched ({type(exc).__name__}: {exc})") from None


def _store(name: str, data: bytes, sources: ImageSources) -> str:
    """Check the bytes are an image and keep them under their digest; LoadImage's value for the file."""
    try:
        with open_image(data, f"input {name!r}", sources.max_pixels) as image:
            suffix = _SUFFIX.get(str(image.format), ".png")
    except ImageRefused as exc:
        raise InputRefused(str(exc)) from None
    file_name = hashlib.sha256(data).hexdigest()[:40] + suffix
    if sources.files is not None and not sources.files.local:
        sources.files.claim(f"input/{FOLDER}/{file_name}", data)  # taken: these very bytes, stored already
        return f"{FOLDER}/{file_name}"
    folder = sources.input_folder / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file_name
    if not path.exists():
        temporary = path.with_suffix(".part")
        temporary.write_bytes(data)
        temporary.replace(path)
    return f"{FOLDER}/{file_name}"


async def resolve_image(name: str, value: str | ImageInput, sources: ImageSources) -> str:
    """LoadImage's value for the image input `name`."""
    if isinstance(value, str):
        return value
    if value.upload is not None:
        return value.upload
    if value.base64 is not None:
        data = _decode_base64(name, value.base64)
    else:
        data = await _download(name, value.url or "", sources)
    return await asyncio.to_thread(_store, name, data, sources)
