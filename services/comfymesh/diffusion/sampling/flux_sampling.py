"""FLUX.1's model sampling (ComfyUI's ModelSamplingFlux, CONST prediction): a 10 000-entry σ table shifted by
an exponential time shift μ, with the model taking σ itself as its timestep.

σ(t) = e^μ / (e^μ + (1/t − 1)) for t ∈ (0, 1]; the table holds σ((i + 1)/10 000) for i = 0…9 999, so σ_max is 1.
FLUX.1 dev's default μ is 1.15; ModelSamplingFlux derives μ from the image size (nodes.model_patches.flux_shift).
"""

from __future__ import annotations

import math

import torch

from comfymesh.diffusion.sampling.model_sampling import ModelSampling

TABLE_SIZE = 10_000
DEFAULT_SHIFT = 1.15


def flux_time_shift(mu: float, t: torch.Tensor) -> torch.Tensor:
    """σ at flow time t for shift μ, in float32 as ComfyUI computes it."""
    t = t.float()
    return math.exp(mu) / (math.exp(mu) + (1.0 / t - 1.0))


class FluxModelSampling(ModelSampling):
    """σ table and maps of a FLUX.1 model with shift μ."""

    def __init__(self, shift: float = DEFAULT_SHIFT) -> None:  # no super().__init__(): this table replaces the discrete one
        self.shift = float(shift)
        self.sigmas = self.sigma(torch.arange(1, TABLE_SIZE + 1) / TABLE_SIZE)
        self.log_sigmas = self.sigmas.log()

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return flux_time_shift(self.shift, t)

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return float(flux_time_shift(self.shift, torch.tensor(1.0 - percent)))
