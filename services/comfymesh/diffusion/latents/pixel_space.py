"""VAELoader's `pixel_space` VAE (ComfyUI's PixelspaceConversionVAE): the latent of a pixel-space model (Chroma
Radiance) is the image itself, [B, 3, H, W] in [-1, 1]. Encoding maps an IMAGE's RGB [0, 1] there, decoding maps
back and clamps, as ComfyUI's VAE wraps that identity model with its usual input and output scaling."""

from __future__ import annotations

from typing import Any

import torch

from comfymesh.catalog import PIXEL_SPACE_VAE
from comfymesh.contracts.handles import HandleKind, ModelHandle

__all__ = ["PIXEL_SPACE_VAE", "decode", "encode", "is_pixel_space", "pixel_space_handle"]


def pixel_space_handle() -> ModelHandle:
    return {"kind": HandleKind.VAE.value, "pixel_space": True}


def is_pixel_space(handle: Any) -> bool:
    return isinstance(handle, dict) and bool(handle.get("pixel_space"))


def encode(pixels: torch.Tensor) -> torch.Tensor:
    """IMAGE [B, H, W, C] in [0, 1] → latent [B, 3, H, W] in [-1, 1] (alpha dropped, as VAEEncode drops it)."""
    return (pixels[..., :3].float() * 2.0 - 1.0).movedim(-1, 1).contiguous()


def decode(latent: torch.Tensor) -> torch.Tensor:
    """Latent [B, 3, H, W] → IMAGE [B, H, W, 3] in [0, 1]."""
    return ((latent.float() + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1).contiguous()
