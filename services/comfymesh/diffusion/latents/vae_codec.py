"""VAEEncode / VAEDecode numerics: crop to the VAE factor, [-1, 1] pixels, mean of the latent posterior."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from comfymesh.contracts.errors import ResourceExhaustedError


def spatial_factor(vae: Any) -> int:
    # a VAE whose latents fold cells into channels (FLUX.2's 2×2) says so with `latent_patch`
    return int(2 ** (len(vae.config.block_out_channels) - 1)) * int(getattr(vae, "latent_patch", 1))


def _param(vae: Any) -> torch.Tensor:
    return next(vae.parameters())


def crop_pixels(pixels: torch.Tensor, factor: int) -> torch.Tensor:
    """Centre-crop [B, H, W, C] so H and W are multiples of the VAE factor."""
    h, w = (pixels.shape[1] // factor) * factor, (pixels.shape[2] // factor) * factor
    if (h, w) == tuple(pixels.shape[1:3]):
        return pixels
    oy, ox = (pixels.shape[1] % factor) // 2, (pixels.shape[2] % factor) // 2
    return pixels[:, oy:oy + h, ox:ox + w, :]


GPU_CHUNK = 4
"""Images a VAE call takes at most on a GPU (so a big batch does not run out of memory)."""


def _chunk(batch: int, device: torch.device) -> int:
    return batch if device.type == "cpu" else GPU_CHUNK


def encode(vae: Any, pixels: torch.Tensor) -> torch.Tensor:
    """IMAGE [B, H, W, C] in [0, 1] → unscaled latent [B, z, H/f, W/f] float32 on the CPU."""
    p = _param(vae)
    x = crop_pixels(pixels.float(), spatial_factor(vae))[..., :3]
    x = (x * 2.0 - 1.0).movedim(-1, 1)
    outs = []
    try:
        with torch.no_grad():
            for part in x.split(_chunk(x.shape[0], p.device)):
                dist = vae.encode(part.to(p.device, p.dtype)).latent_dist
                outs.append(dist.mean.float().cpu())
    except torch.cuda.OutOfMemoryError as exc:
        raise ResourceExhaustedError(f"out of GPU memory in VAE encode: {exc}") from exc
    return torch.cat(outs)


def decode(vae: Any, latent: torch.Tensor, decoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
           ) -> torch.Tensor:
    """Unscaled latent → IMAGE [B, H, W, 3] float32 in [0, 1], left on the VAE's device.

    Readers copy it when they need it on the host (artifact export does); SaveImage converts it to
    8 bits on the GPU first, so a quarter of the bytes cross and no host core walks the float frame.
    `decoder` (latent in the VAE's dtype → pixels in [-1, 1]), where given, replaces `vae.decode`: the
    fast path's compiled decoder."""
    p = _param(vae)
    outs = []
    try:
        with torch.no_grad():
            for part in latent.float().split(_chunk(latent.shape[0], p.device)):
                z = part.to(p.device, p.dtype)
                y = (decoder(z) if decoder is not None else vae.decode(z).sample).float()
                # channels-last made contiguous on the device (free there): every reader of the image
                # (PNG encoding, artifact export) then walks memory in order instead of by strides
                outs.append(torch.clamp((y + 1.0) / 2.0, 0.0, 1.0).movedim(1, -1).contiguous())
        return settled(outs[0] if len(outs) == 1 else torch.cat(outs))
    except torch.cuda.OutOfMemoryError as exc:
        raise ResourceExhaustedError(f"out of GPU memory in VAE decode: {exc}") from exc


def settled(images: torch.Tensor) -> torch.Tensor:
    """`images` once the GPU has made them: the node ends when its image exists, so its time (and any error)
    stays with VAEDecode instead of landing in the next node that reads it."""
    if images.is_cuda:
        torch.cuda.current_stream(images.device).synchronize()
    return images
