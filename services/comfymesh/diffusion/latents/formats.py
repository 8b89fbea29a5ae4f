"""Latent formats per family: the scale applied around sampling and the Latent2RGB preview factors."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LatentFormat:
    scale_factor: float
    rgb_factors: tuple[tuple[float, float, float], ...]  # rows: latent channels; columns: R, G, B
    rgb_bias: tuple[float, float, float] | None = None

    @property
    def channels(self) -> int:
        return len(self.rgb_factors)

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        return latent * self.scale_factor

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        return latent / self.scale_factor


SD15 = LatentFormat(
    0.18215,
    ((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350), (-0.2829, 0.1762, 0.2721), (-0.2120, -0.2616, -0.7177)),
)
SDXL = LatentFormat(
    0.13025,
    ((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362), (-0.3165, -0.2492, -0.2188)),
    (0.1084, -0.0175, -0.0011),
)


def for_family(family: str) -> LatentFormat:
    return SDXL if family.startswith("sdxl") else SD15
