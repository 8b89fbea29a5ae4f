"""Flow-matching model sampling (ComfyUI's ModelSamplingDiscreteFlow with CONST prediction): the shifted
σ table of rectified-flow models (Z-Image, SD3, AuraFlow) and its σ ↔ timestep maps.

σ(t) = shift·t / (1 + (shift − 1)·t) for t ∈ (0, 1]; the model's timestep is σ·multiplier. The table holds
σ((i + 1)/1000) for i = 0…999, so σ_max is 1 and the start point is pure noise.
"""

from __future__ import annotations

import torch

from comfymesh.diffusion.sampling.model_sampling import NUM_TIMESTEPS, ModelSampling


def time_snr_shift(shift: float, t: torch.Tensor) -> torch.Tensor:
    """The shifted flow time; shift 1 leaves t unchanged."""
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


class FlowModelSampling(ModelSampling):
    """σ table and maps of a flow model with `shift` and timestep `multiplier` (1000 for SD3, 1 for Z-Image and
    AuraFlow, whose models take σ itself)."""

    def __init__(self, shift: float = 1.0, multiplier: float = 1000.0) -> None:  # no super().__init__(): the flow σ table replaces the discrete one
        self.shift = float(shift)
        self.multiplier = float(multiplier)
        steps = torch.arange(1, NUM_TIMESTEPS + 1, dtype=torch.float32) / NUM_TIMESTEPS
        self.sigmas = self.sigma(steps * self.multiplier)
        self.log_sigmas = self.sigmas.log()

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma * self.multiplier

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return time_snr_shift(self.shift, t.float() / self.multiplier)

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return float(time_snr_shift(self.shift, torch.tensor(1.0 - percent)))


def noise_scaling(sigma: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """The start point at σ (CONST): σ·noise + (1 − σ)·latent."""
    return sigma * noise + (1.0 - sigma) * latent


def inverse_noise_scaling(sigma: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """What sampling hands back when it stops at σ > 0 (leftover noise): latent / (1 − σ)."""
    return latent / (1.0 - sigma)
