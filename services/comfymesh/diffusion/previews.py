"""Latent2RGB step previews: D_i's first batch item through the family's factors, as a small JPEG."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from comfymesh.diffusion.latent_formats import LatentFormat


def latent_to_rgb(denoised: torch.Tensor, fmt: LatentFormat) -> np.ndarray:
    """uint8 [h, w, 3] at latent resolution (scaled latent space in, as the sampler sees it)."""
    return latent_rgb_tensor(denoised, fmt).cpu().numpy()


def latent_rgb_tensor(denoised: torch.Tensor, fmt: LatentFormat) -> torch.Tensor:
    """The same preview as a uint8 [h, w, 3] tensor on the latent's device (no host sync)."""
    factors = torch.tensor(fmt.rgb_factors, dtype=torch.float32, device=denoised.device)
    rgb = torch.einsum("chw,cr->hwr", denoised[0].float(), factors)
    if fmt.rgb_bias is not None:
        rgb = rgb + torch.tensor(fmt.rgb_bias, dtype=torch.float32, device=denoised.device)
    rgb = ((rgb + 1.0) / 2.0).clamp(0, 1) * 255.0
    return rgb.to(torch.uint8)  # truncation, like ComfyUI


def preview_jpeg(denoised: torch.Tensor, fmt: LatentFormat, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(latent_to_rgb(denoised, fmt), "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
