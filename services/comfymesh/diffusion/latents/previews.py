"""Latent2RGB step previews: D_i's first batch item through the family's factors, as a small JPEG."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from PIL import Image

from comfymesh.diffusion.latents.formats import LatentFormat


def latent_to_rgb(denoised: torch.Tensor, fmt: LatentFormat) -> np.ndarray:
    """uint8 [h, w, 3] at latent resolution (scaled latent space in, as the sampler sees it)."""
    return latent_rgb_tensor(denoised, fmt).cpu().numpy()


_factor_tensors: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor | None]] = {}


def _factors(fmt: LatentFormat, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The format's latent→RGB factors and bias on `device`, made once: a tensor built from a list on a
    GPU is a blocking copy, which waits for every queued step and so would stall the loop each step."""
    bias = tuple(fmt.rgb_bias) if fmt.rgb_bias is not None else None
    key = (tuple(tuple(row) for row in fmt.rgb_factors), bias, str(device))
    found = _factor_tensors.get(key)
    if found is None:
        found = (torch.tensor(fmt.rgb_factors, dtype=torch.float32, device=device),
                 None if bias is None else torch.tensor(bias, dtype=torch.float32, device=device))
        _factor_tensors[key] = found
    return found


def latent_rgb_tensor(denoised: torch.Tensor, fmt: LatentFormat) -> torch.Tensor:
    """The same preview as a uint8 [h, w, 3] tensor on the latent's device (no host sync)."""
    factors, bias = _factors(fmt, denoised.device)
    first = denoised[0, :, 0] if denoised.ndim == 5 else denoised[0]  # 5-D (frames): the first frame, as ComfyUI
    if fmt.patch > 1:  # unfold the cells first (channel order: channel, row in cell, column in cell)
        p, (c4, h, w) = fmt.patch, first.shape
        first = first.reshape(c4 // p**2, p, p, h, w).permute(0, 3, 1, 4, 2).reshape(c4 // p**2, h * p, w * p)
    rgb = torch.einsum("chw,cr->hwr", first.float(), factors)
    if bias is not None:
        rgb = rgb + bias
    rgb = ((rgb + 1.0) / 2.0).clamp(0, 1) * 255.0
    return rgb.to(torch.uint8)  # truncation, like ComfyUI


def preview_jpeg(denoised: torch.Tensor, fmt: LatentFormat, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(latent_to_rgb(denoised, fmt), "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
