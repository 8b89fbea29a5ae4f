"""Tiled VAE decode and encode (VAEDecodeTiled / VAEEncodeTiled), with ComfyUI's tiling and blending.

A tiling pass walks tiles of `tile` (h, w) input pixels stepping by tile − overlap (from 0 while a tile
still starts before size − overlap; a tile that would run past the edge is moved back inside, and a side no
larger than its tile is one tile), runs the VAE on each tile alone, and blends the results: every output
tile is weighted by a feather ramping (t + 1) / f over the f = round(overlap · scale) pixels at each of its
edges, and the sum is divided by the summed weights. An image that fits in one tile is run whole.

Decode averages three passes (tiles w/2 × 2h, 2w × h/2 and w × h, in latent pixels) and then maps to
[0, 1]; encode averages w × h, 2w × h/2 and w/2 × 2h tiles (in image pixels) of latent means. Only one
tile is on the VAE at a time, so the memory the VAE needs grows with the tile, not the image.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch

from comfymesh.contracts.errors import ResourceExhaustedError
from comfymesh.diffusion.latents.vae_codec import crop_pixels, spatial_factor

TileFn = Callable[[torch.Tensor], torch.Tensor]


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one side (each kept inside: at most size − overlap)."""
    if size <= tile:
        return [0]
    return [max(0, min(size - overlap, p)) for p in range(0, size - overlap, max(tile - overlap, 1))]


def _feather(shape: torch.Size, fade: tuple[int, int]) -> torch.Tensor:
    """Weights [1, 1, h, w] ramping (t + 1) / f over f pixels at every edge (a side not over f is left flat)."""
    weights = torch.ones(1, 1, shape[-2], shape[-1])
    for dim, f in zip((2, 3), fade, strict=True):
        if f >= weights.shape[dim]:
            continue
        for t in range(f):
            ramp = (t + 1) / f
            weights.narrow(dim, t, 1).mul_(ramp)
            weights.narrow(dim, weights.shape[dim] - 1 - t, 1).mul_(ramp)
    return weights


def tiled_pass(samples: torch.Tensor, fn: TileFn, tile: tuple[int, int], overlap: int, scale: float,
               out_channels: int) -> torch.Tensor:
    """One tiling of `samples` [B, C, H, W] through `fn` (which scales sizes by `scale`), float32 on the CPU."""
    out_h, out_w = round(samples.shape[2] * scale), round(samples.shape[3] * scale)
    output = torch.empty(samples.shape[0], out_channels, out_h, out_w)
    fade = (round(overlap * scale), round(overlap * scale))
    for b in range(samples.shape[0]):
        item = samples[b:b + 1]
        if item.shape[2] <= tile[0] and item.shape[3] <= tile[1]:
            output[b:b + 1] = fn(item).float().cpu()
            continue
        total = torch.zeros(1, out_channels, out_h, out_w)
        weight = torch.zeros(1, out_channels, out_h, out_w)
        for y, x in itertools.product(_starts(item.shape[2], tile[0], overlap),
                                      _starts(item.shape[3], tile[1], overlap)):
            part = item[:, :, y:y + min(tile[0], item.shape[2] - y), x:x + min(tile[1], item.shape[3] - x)]
            decoded = fn(part).float().cpu()
            mask = _feather(decoded.shape, fade).expand_as(decoded)
            oy, ox = round(y * scale), round(x * scale)
            region = (slice(None), slice(None), slice(oy, oy + decoded.shape[2]), slice(ox, ox + decoded.shape[3]))
            total[region] += decoded * mask
            weight[region] += mask
        output[b:b + 1] = total / weight
    return output


def _param(vae: Any) -> torch.Tensor:
    return next(vae.parameters())


def decode_tiled(vae: Any, latent: torch.Tensor, tile: int = 64, overlap: int = 16) -> torch.Tensor:
    """Unscaled latent [B, 4, h, w] → IMAGE [B, H, W, 3] in [0, 1] (CPU float32); `tile`, `overlap` in latent px."""
    p = _param(vae)
    factor = spatial_factor(vae)

    def run(z: torch.Tensor) -> torch.Tensor:
        return vae.decode(z.to(p.device, p.dtype)).sample

    try:
        with torch.no_grad():
            z = latent.float()
            passes = [tiled_pass(z, run, (tile * 2, tile // 2), overlap, factor, 3),
                      tiled_pass(z, run, (tile // 2, tile * 2), overlap, factor, 3),
                      tiled_pass(z, run, (tile, tile), overlap, factor, 3)]
    except torch.cuda.OutOfMemoryError as exc:
        raise ResourceExhaustedError(f"out of GPU memory in tiled VAE decode: {exc}") from exc
    y = (passes[0] + passes[1] + passes[2]) / 3.0
    return torch.clamp((y + 1.0) / 2.0, 0.0, 1.0).movedim(1, -1).contiguous()


def encode_tiled(vae: Any, pixels: torch.Tensor, tile: int = 512, overlap: int = 64) -> torch.Tensor:
    """IMAGE [B, H, W, C] in [0, 1] → unscaled latent means [B, z, H/f, W/f] (CPU float32); sizes in image px."""
    p = _param(vae)
    factor = spatial_factor(vae)
    x = (crop_pixels(pixels.float(), factor)[..., :3] * 2.0 - 1.0).movedim(-1, 1)
    channels = int(vae.config.latent_channels) * int(getattr(vae, "latent_patch", 1)) ** 2  # FLUX.2: 32 → 128

    def run(part: torch.Tensor) -> torch.Tensor:
        return vae.encode(part.to(p.device, p.dtype)).latent_dist.mean

    try:
        with torch.no_grad():
            total = tiled_pass(x, run, (tile, tile), overlap, 1 / factor, channels)
            total += tiled_pass(x, run, (tile // 2, tile * 2), overlap, 1 / factor, channels)
            total += tiled_pass(x, run, (tile * 2, tile // 2), overlap, 1 / factor, channels)
    except torch.cuda.OutOfMemoryError as exc:
        raise ResourceExhaustedError(f"out of GPU memory in tiled VAE encode: {exc}") from exc
    return total / 3.0
