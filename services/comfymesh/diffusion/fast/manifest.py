"""The warm-up manifest: buckets to build at stage start, and dummy inputs of a bucket."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from comfymesh.diffusion.fast.decoder import FastDecoder
from comfymesh.diffusion.fast.denoiser import FastDenoiser
from comfymesh.diffusion.fast.unet import FastUNet
from comfymesh.diffusion.latents import vae_codec

log = logging.getLogger(__name__)


def unet_inputs(batch: int, height: int, width: int, context_dim: int, dtype: torch.dtype, device: torch.device,
                adm: int | None = None, cfg: bool = True, context_len: int = 77,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Dummy UNet inputs of the bucket that a KSampler of this size would use (CFG doubles the batch)."""
    n = batch * (2 if cfg else 1)
    x = torch.randn(n, 4, height // 8, width // 8, device=device).to(dtype)
    t = torch.full((n,), 500.0, device=device)
    ctx = torch.randn(n, context_len, context_dim, device=device).to(dtype)
    y = None if adm is None else torch.randn(n, adm, device=device).to(dtype)
    return x, t, ctx, y


def family_inputs(model: Any, batch: int, height: int, width: int, text_length: int, cfg: bool = True,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Dummy (x, t, ctx, y) of a family's text-to-image call of this size (`model`: its SamplingModel): 4-D
    latents, `text_length` context tokens, y where the model takes one (FLUX: pooled ‖ guidance 3.5)."""
    n = batch * (2 if cfg else 1)
    device, dtype = model.device, model.dtype
    x = torch.randn(n, model.latent_format.channels, height // 8, width // 8, device=device).to(dtype)
    t = torch.full((n,), 0.5, device=device)
    ctx = torch.randn(n, text_length, model.context_dim, device=device).to(dtype)
    if model.adm is None:
        return x, t, ctx, None
    if model.make_y is not None:
        y = model.make_y(None, {}).to(device).expand(n, -1)
    else:
        y = torch.randn(n, model.adm, device=device)
    return x, t, ctx, y.to(dtype)


def decoder_input(batch: int, height: int, width: int, channels: int, dtype: torch.dtype,
                  device: torch.device) -> torch.Tensor:
    """A dummy latent of the decoder bucket for `batch` images of this size."""
    return torch.randn(batch, channels, height // 8, width // 8, device=device).to(dtype)


@dataclass
class WarmTarget:
    """What a warm-up manifest entry builds buckets of: a checkpoint's sampling model and its decoder."""

    model: Any  # ksampler.SamplingModel (not imported: that module imports this one)
    decoder: FastDecoder | None
    latent_channels: int = 4


def warmup_from_manifest(load: Callable[[dict[str, Any]], WarmTarget], manifest: Path) -> list[str]:
    """Start building the buckets listed in a JSON manifest: [{"ckpt", "width", "height", "batch", "cfg",
    "compile"}] ("compile": false = graphed tier only; "batch" counts latents, so a batched KSampler of
    n jobs × 1 latent with CFG is "batch": n, padded to a power of two). Each entry starts a UNet bucket
    and, where the checkpoint has a fast decoder, a VAE decoder bucket (compiled only with "compile").
    A family's diffusion model is an entry with "diffusion_model" (and "weight_dtype", "vae") instead of
    "ckpt", and "text_length" (its prompts' context tokens, default 256): text length is part of its bucket.

    `load(entry)` returns the entry's WarmTarget (its model's unet must be a FastUNet or FastDenoiser).
    Returns the names it started; errors are logged, never raised (serving goes on).
    """
    if not manifest.is_file():
        return []
    started = []
    try:
        entries = json.loads(manifest.read_text())
    except ValueError as exc:
        log.warning("warm-up manifest %s is not JSON: %s", manifest, exc)
        return []
    for entry in entries:
        try:
            target = load(entry)
            model = target.model
            batch, height, width = int(entry.get("batch", 1)), int(entry.get("height", 512)), int(entry.get("width", 512))
            compile_it, cfg = bool(entry.get("compile", True)), bool(entry.get("cfg", True))
            if isinstance(model.unet, FastUNet):
                model.unet.start(*unet_inputs(batch, height, width, model.context_dim, model.dtype, model.device,
                                              model.adm, cfg), compile=compile_it)
            elif isinstance(model.unet, FastDenoiser):
                dummy = family_inputs(model, batch, height, width, int(entry.get("text_length", 256)), cfg)
                static = model.unet.form.inputs(*dummy)
                if static is not None:
                    model.unet.start(*static, compile=compile_it)
            else:
                continue
            decoder = target.decoder
            if decoder is not None:  # without "compile" its bucket is made to stay eager (no build later)
                dtype = next(decoder.vae.parameters()).dtype
                decoder.start(decoder_input(min(batch, vae_codec.GPU_CHUNK), height, width, target.latent_channels,
                                            dtype, decoder.device), compile=compile_it)
            started.append(f"{entry.get('ckpt') or entry['diffusion_model']}@{width}x{height}x{batch}")
        except Exception as exc:
            log.warning("warm-up entry %s failed: %s", entry, exc)
    return started
