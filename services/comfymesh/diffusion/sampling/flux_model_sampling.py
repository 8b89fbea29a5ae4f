"""FLUX-type model sampling (ComfyUI's ModelSamplingFlux, CONST prediction): the exponentially shifted σ table
of FLUX.1, Chroma and Qwen-Image, whose models take σ itself as their timestep.

σ(t) = e^μ / (e^μ + (1/t − 1)) for t ∈ (0, 1], μ the shift (Qwen-Image's default 1.15, ModelSamplingFlux's
resolution-dependent value); the table holds σ(i/10 000) for i = 1…10 000, so σ_max is 1.
"""

from __future__ import annotations

import math

import torch

from comfymesh.diffusion.sampling.model_sampling import ModelSampling

TABLE_SIZE = 10_000


def flux_time_shift(mu: float, t: torch.Tensor) -> torch.Tensor:
    """e^μ / (e^μ + (1/t − 1)), elementwise in t's dtype."""
    return math.exp(mu) / (math.exp(mu) + (1.0 / t - 1.0))


class FluxModelSampling(ModelSampling):
    """σ table and maps of a FLUX-type flow model with shift μ."""

    def __init__(self, shift: float = 1.15) -> None:  # no super().__init__(): this table replaces the discrete one
        self.shift = float(shift)
        self.multiplier = 1.0
        self.sigmas = self.sigma(torch.arange(1, TABLE_SIZE + 1, dtype=torch.float32) / TABLE_SIZE)
        self.log_sigmas = self.sigmas.log()

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return flux_time_shift(self.shift, t.float())

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return float(flux_time_shift(self.shift, torch.tensor(1.0 - percent)))
