"""unCLIPConditioning on SDXL ("revision"): image embeds replace the conditioning's pooled output.

A conditioning entry carries its unCLIP images as extras: `unclip_conditioning`, a JSON list of
`{"strength", "noise_augmentation"}`, and the image embeds [B, P] of entry i under `unclip_image_embeds_<i>`
(arrays travel beside JSON in a CONDITIONING, never inside it).

As ComfyUI's SDXL encode_adm (sdxl_pooled / unclip_adm), each image embed e with strength w and noise
augmentation a becomes w·(√ᾱ_t·e + √(1−ᾱ_t)·n) at t = round(999·a), ᾱ the squaredcos_cap_v2 schedule of
1000 steps and n normal noise drawn from the sampler seed − 10 (the same draw for every image); with more
than one image the weighted sum is noised once more at t = 0. The noise-level embedding ComfyUI appends is
cut off again by SDXL, so it is not computed. ComfyUI draws that second noise unseeded; here it comes from
the same seed, so results repeat."""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import torch

UNCLIP = "unclip_conditioning"
STEPS = 1000
MAX_BETA = 0.999


def embeds_key(index: int) -> str:
    return f"unclip_image_embeds_{index}"


def add_unclip(extras: dict[str, Any], image_embeds: torch.Tensor, strength: float,
               noise_augmentation: float) -> dict[str, Any]:
    """A copy of a conditioning entry's extras with one more unCLIP image batch."""
    entries = list(extras.get(UNCLIP, []))
    out = {**extras, UNCLIP: [*entries, {"strength": float(strength), "noise_augmentation": float(noise_augmentation)}]}
    out[embeds_key(len(entries))] = image_embeds
    return out


@cache
def _schedule() -> tuple[torch.Tensor, torch.Tensor]:
    """(√ᾱ_t, √(1−ᾱ_t)) of the squaredcos_cap_v2 betas, in float64 then float32 as ComfyUI registers them."""
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = torch.tensor([min(1 - alpha_bar((i + 1) / STEPS) / alpha_bar(i / STEPS), MAX_BETA) for i in range(STEPS)],
                         dtype=torch.float64)
    cumprod = torch.cumprod(1.0 - betas, 0)
    return cumprod.sqrt().float(), (1.0 - cumprod).sqrt().float()


def _noised(x: torch.Tensor, level: int, noise: torch.Tensor) -> torch.Tensor:
    keep, add = _schedule()
    return keep[level] * x + add[level] * noise


def _seeded_noise(shape: torch.Size, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def sdxl_pooled(extras: dict[str, Any], seed: int) -> Any:
    """The pooled vector SDXL's ADM starts with: the revision image embeds when unCLIP images are attached
    ([1, P]), else the text encoder's pooled output (None when there is none)."""
    entries = extras.get(UNCLIP)
    if not entries:
        return extras.get("pooled_output")
    rows: list[torch.Tensor] = []
    for index, entry in enumerate(entries):
        embeds = torch.as_tensor(extras[embeds_key(index)]).float()
        level = round((STEPS - 1) * float(entry["noise_augmentation"]))
        for row in embeds.reshape(-1, embeds.shape[-1]):
            x = row[None]
            rows.append(_noised(x, level, _seeded_noise(x.shape, seed - 10)) * float(entry["strength"]))
    if len(rows) == 1:
        return rows[0]
    merged = torch.stack(rows).sum(0)
    return _noised(merged, 0, _seeded_noise(merged.shape, seed - 10))
