"""The extra input channels of FLUX.1's Fill, Canny and Depth models, as ComfyUI's Flux model builds them.

A FLUX.1 model whose `img_in` takes more channels than the latent's C (16) gets them appended to x on the
channel axis before patching:

- image (2·C channels: Canny, Depth): process_in(`concat_latent_image`), or process_in of an all-zero latent
  without one, resized bilinearly with a centre crop to the latent and to the batch;
- fill (2·C + 64: Fill): that image, then the mask at 8× the latent's size folded into 64 channels, one per
  pixel of each 8×8 cell (channel 8·dy + dx). The mask is `concat_mask`, else the call's noise mask, else
  ones; its channels are averaged first, and it is not rounded.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from comfymesh.contracts.errors import NodeInputError
from comfymesh.diffusion.latents.formats import LatentFormat
from comfymesh.diffusion.sampling.concat import resize_to_batch, upscale_center

MASK_CELL = 8  # the VAE's downscale: a latent cell covers 8×8 mask pixels
FILL_MASK_CHANNELS = MASK_CELL**2


def flux_concat_kind(in_channels: int, latent_channels: int) -> str | None:
    """"flux_image" (2·C input channels), "flux_fill" (2·C + 64) or None (C: no concat), else a refusal."""
    kinds = {latent_channels: None, 2 * latent_channels: "flux_image",
             2 * latent_channels + FILL_MASK_CHANNELS: "flux_fill"}
    if in_channels not in kinds:
        raise NodeInputError(f"a FLUX.1 model with {in_channels} input channels is not supported (expected "
                             f"{', '.join(str(k) for k in kinds)})")
    return kinds[in_channels]


def image_channels(extras: dict[str, Any], fmt: LatentFormat, latent: torch.Tensor) -> torch.Tensor:
    """process_in(`concat_latent_image`) (zeros without one) at the latent's size and batch."""
    image = extras.get("concat_latent_image")
    out = torch.zeros_like(latent) if image is None else torch.as_tensor(image).float().to(latent.device)
    if out.shape[-2:] != latent.shape[-2:]:
        out = upscale_center(out, latent.shape[-2], latent.shape[-1])
    return fmt.process_in(resize_to_batch(out, latent.shape[0])).to(latent.dtype)


def mask_channels(mask: torch.Tensor | None, latent: torch.Tensor) -> torch.Tensor:
    """The mask [B, C, H, W] or [B, H, W] (None: ones) as [B, 64, h, w]: channel-averaged, resized to 8h×8w
    and each 8×8 cell's pixels laid out along the channels."""
    n, _, h, w = latent.shape
    if mask is None:
        mask = torch.ones(n, 1, h, w, device=latent.device)
    mask = torch.as_tensor(mask).float().to(latent.device)
    mask = mask.unsqueeze(1) if mask.ndim == 3 else mask.mean(dim=1, keepdim=True)
    mask = upscale_center(mask, h * MASK_CELL, w * MASK_CELL)
    return resize_to_batch(F.pixel_unshuffle(mask, MASK_CELL), n).to(latent.dtype)


def flux_concat(kind: str, extras: dict[str, Any], fmt: LatentFormat, latent: torch.Tensor,
                noise_mask: torch.Tensor | None) -> torch.Tensor:
    """The concat channels of one conditioning entry for a FLUX.1 model of `kind` ("flux_image"/"flux_fill")."""
    image = image_channels(extras, fmt, latent)
    if kind == "flux_image":
        return image
    mask = extras.get("concat_mask")
    return torch.cat([image, mask_channels(noise_mask if mask is None else mask, latent)], dim=1)
