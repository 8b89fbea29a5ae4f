"""PNG encoding with ComfyUI's metadata chunks (Pillow, as ComfyUI itself writes them)."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo


def png_metadata(prompt: Any | None, extra_pnginfo: Mapping[str, Any] | None) -> PngInfo:
    """tEXt `prompt` first, then one chunk per extra_pnginfo key, in the mapping's order.

    json.dumps with its defaults (", "/": " separators, ASCII escapes): the frontend and other tools
    read these exact strings back, and ASCII keeps them valid Latin-1 tEXt.
    """
    info = PngInfo()
    if prompt is not None:
        info.add_text("prompt", json.dumps(prompt))
    for key, value in (extra_pnginfo or {}).items():
        info.add_text(key, json.dumps(value))
    return info


def encode_png(pixels: np.ndarray, *, compress_level: int, metadata: PngInfo | None = None) -> bytes:
    """Encode one uint8 frame [H,W,C] (C = 1, 3 or 4) as PNG bytes."""
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]  # Pillow has no [H,W,1] mode; a single channel is greyscale "L"
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", pnginfo=metadata, compress_level=compress_level)
    return buffer.getvalue()
