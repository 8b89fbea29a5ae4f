"""A run's output images as the client asked for them: PNG as saved, or WebP/JPEG converted here with Pillow,
and written to an fsspec destination under a prefix the server's configuration allows, with its credentials."""

from __future__ import annotations

import io
import posixpath
from enum import StrEnum
from pathlib import Path
from typing import Any

import fsspec
from PIL import Image

from comfymesh.config.workflows import WorkflowSettings


class OutputFormat(StrEnum):
    PNG = "png"
    WEBP = "webp"
    JPEG = "jpeg"


MEDIA_TYPES = {OutputFormat.PNG: "image/png", OutputFormat.WEBP: "image/webp", OutputFormat.JPEG: "image/jpeg"}
SUFFIXES = {OutputFormat.PNG: ".png", OutputFormat.WEBP: ".webp", OutputFormat.JPEG: ".jpg"}


class DestinationRefused(ValueError):
    """A destination the configuration does not allow; the message says which prefixes are allowed."""


def encode(path: Path | bytes, output_format: OutputFormat, quality: int) -> bytes:
    """The saved PNG at `path` (or its bytes, from a shared files store) in `output_format` (PNG: the file's
    bytes, metadata included)."""
    if output_format is OutputFormat.PNG:
        return path if isinstance(path, bytes) else path.read_bytes()
    with Image.open(io.BytesIO(path) if isinstance(path, bytes) else path, formats=["PNG"]) as image:
        # JPEG has no alpha: composite on white rather than let the transparent pixels go black
        if output_format is OutputFormat.JPEG and image.mode in ("RGBA", "LA", "P"):
            rgba = image.convert("RGBA")
            converted = Image.new("RGB", rgba.size, (255, 255, 255))
            converted.paste(rgba, mask=rgba.getchannel("A"))
        else:
            converted = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        buffer = io.BytesIO()
        converted.save(buffer, format=output_format.value.upper(), quality=quality)
        return buffer.getvalue()


def allowed_destination(settings: WorkflowSettings, destination: str) -> str:
    """`destination` as a folder URL ending in '/', if it lies under a configured prefix."""
    if "://" not in destination or any(part in ("..", ".") for part in destination.split("://", 1)[1].split("/")):
        raise DestinationRefused(f"{destination!r} is not a folder URL (protocol://bucket/path/, no . or ..)")
    folder = destination if destination.endswith("/") else destination + "/"
    prefixes = settings.output_prefixes()
    if not any(folder.startswith(prefix if prefix.endswith("/") else prefix + "/") for prefix in prefixes):
        allowed = ", ".join(prefixes) if prefixes else "none (COMFYMESH_OUTPUT_DESTINATIONS is empty)"
        raise DestinationRefused(f"{destination!r} is not under an allowed output destination: {allowed}")
    return folder


def write(settings: WorkflowSettings, folder: str, name: str, data: bytes) -> str:
    """Write `data` as `folder`+`name` with the server's storage options; the URL written."""
    protocol = folder.split("://", 1)[0]
    target = folder + posixpath.basename(name)
    options: dict[str, Any] = settings.storage_options(protocol)
    with fsspec.open(target, "wb", **options) as handle:
        handle.write(data)
    return target
