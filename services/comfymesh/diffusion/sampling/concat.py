"""The extra UNet input channels of inpainting (9-channel) and instruct-pix2pix (8-channel) models.

A conditioning entry may carry `concat_latent_image` (an unscaled LATENT tensor) and `concat_mask` (a
MASK [B, 1, H, W] or [B, H, W] at any size), set by InpaintModelConditioning / InstructPixToPixConditioning.
The UNet then receives x_in ‖ concat on the channel axis, where, as ComfyUI builds it once per sampling call:

- inpaint (4 + 5 channels): concat = [mask, masked latent]; the mask is `concat_mask`, else the call's
  noise mask, first channel, resized bilinearly to the latent and rounded; the masked latent is
  process_in(`concat_latent_image`), else the call's own (scaled) latent. Without any mask: a ones
  mask and the latent of a mid-grey image.
- ip2p (4 + 4 channels): concat = `concat_latent_image` (zeros without one), unscaled for SD1.x and
  process_in'd for SDXL.

Both are resized bilinearly with a centre crop to the latent size when they differ, and to the batch by
ComfyUI's nearest-index rule. A 4-channel model takes no concat and ignores these extras. FLUX.1's Fill and
Canny/Depth models build theirs by their own rules (sampling/flux_concat.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from comfymesh.contracts.errors import NodeInputError
from comfymesh.diffusion.latents.formats import LatentFormat
from comfymesh.diffusion.sampling.guidance import CondEntry

LATENT_CHANNELS = 4
# the SD latent of an all-zero (mid-grey, 0.5 in [0, 1]) image per channel: an inpaint model's blank input
BLANK_INPAINT_LATENT = (0.8223, -0.6876, 0.6364, 0.1380)


def concat_kind(in_channels: int, latent_channels: int = LATENT_CHANNELS, family: str = "") -> str | None:
    """"inpaint" (latent + 5 channels), "ip2p" (latent + 4) or None (the latent's own: no concat), else a
    refusal; FLUX.1's own kinds for `family` "flux" (sampling/flux_concat.py)."""
    if family == "flux":
        from comfymesh.diffusion.sampling.flux_concat import flux_concat_kind  # it builds on this module

        return flux_concat_kind(in_channels, latent_channels)
    kinds = {latent_channels: None, latent_channels + 5: "inpaint", latent_channels + 4: "ip2p"}
    if in_channels not in kinds:
        raise NodeInputError(f"a UNet with {in_channels} input channels is not supported")
    return kinds[in_channels]


def resize_to_batch(t: torch.Tensor, batch: int) -> torch.Tensor:
    """ComfyUI's resize_to_batch_size: spread indexes evenly when shrinking, nearest index when growing."""
    n = t.shape[0]
    if n == batch:
        return t
    if batch <= 1:
        return t[:batch]
    if batch < n:
        scale = (n - 1) / (batch - 1)
        index = [min(round(i * scale), n - 1) for i in range(batch)]
    else:
        scale = n / batch
        index = [min(math.floor((i + 0.5) * scale), n - 1) for i in range(batch)]
    return t[index]


def upscale_center(t: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize to (height, width) after cropping the centre to the target's aspect ratio."""
    old_h, old_w = t.shape[-2], t.shape[-1]
    old_aspect, new_aspect = old_w / old_h, width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    cropped = t.narrow(-2, y, old_h - y * 2).narrow(-1, x, old_w - x * 2)
    return F.interpolate(cropped, size=(height, width), mode="bilinear")


def _fit(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`t` [B, C, h, w] at the latent's size (when its spatial size differs) and batch."""
    if t.shape[-2:] != like.shape[-2:]:
        t = upscale_center(t, like.shape[-2], like.shape[-1])
    return resize_to_batch(t, like.shape[0])


def _inpaint(extras: dict[str, Any], fmt: LatentFormat, latent: torch.Tensor,
             noise_mask: torch.Tensor | None) -> torch.Tensor:
    image = extras.get("concat_latent_image")
    masked = latent if image is None else fmt.process_in(torch.as_tensor(image).float().to(latent.device))
    if masked.shape[1:] != latent.shape[1:]:
        masked = upscale_center(masked, latent.shape[-2], latent.shape[-1])
    masked = resize_to_batch(masked, latent.shape[0])
    mask = extras.get("concat_mask")
    mask = noise_mask if mask is None else torch.as_tensor(mask).float().to(latent.device)
    if mask is None:
        blank = torch.tensor(BLANK_INPAINT_LATENT, dtype=latent.dtype, device=latent.device)
        return torch.cat([torch.ones_like(latent[:, :1]), blank.reshape(1, -1, 1, 1).expand_as(latent)], dim=1)
    if mask.ndim == latent.ndim:
        mask = mask[:, :1]
    mask = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1])
    if mask.shape[-2:] != latent.shape[-2:]:
        mask = upscale_center(mask, latent.shape[-2], latent.shape[-1])
    return torch.cat([resize_to_batch(mask.round(), latent.shape[0]), masked], dim=1)


def _ip2p(extras: dict[str, Any], fmt: LatentFormat, family: str, latent: torch.Tensor) -> torch.Tensor:
    image = extras.get("concat_latent_image")
    if image is None:
        return torch.zeros_like(latent)
    out = _fit(torch.as_tensor(image).float().to(latent.device), latent)
    return fmt.process_in(out) if family.startswith("sdxl") else out


def concat_for(kind: str | None, extras: dict[str, Any], fmt: LatentFormat, family: str, latent: torch.Tensor,
               noise_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The concat channels [B, c, h, w] of one conditioning entry (None for a 4-channel model).

    `latent` is the call's scaled latent on the device, `noise_mask` its prepared noise mask or None."""
    if kind is not None and kind.startswith("flux_"):
        from comfymesh.diffusion.sampling.flux_concat import flux_concat  # it builds on this module

        return flux_concat(kind, extras, fmt, latent, noise_mask)
    if kind == "inpaint":
        return _inpaint(extras, fmt, latent, noise_mask)
    if kind == "ip2p":
        return _ip2p(extras, fmt, family, latent)
    return None


def with_concat(entries: list[CondEntry], conditioning: Sequence[Any], kind: str | None, fmt: LatentFormat,
                family: str, latent: torch.Tensor, noise_mask: torch.Tensor | None) -> list[CondEntry]:
    """`entries` (made one per item of `conditioning`, in order) with their concat channels set."""
    if kind is None:
        return entries
    if len(entries) != len(conditioning):
        raise NodeInputError("conditioning entries and their extras do not line up for the concat channels")
    out = []
    for entry, item in zip(entries, conditioning, strict=True):
        extras = dict(item[1]) if len(item) > 1 and item[1] else {}
        out.append(dataclasses.replace(entry, concat=concat_for(kind, extras, fmt, family, latent, noise_mask)))
    return out
