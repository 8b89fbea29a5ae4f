"""karras (Karras et al. 2022, ρ = 7): interpolate σ^(1/ρ) linearly from σ_max to σ_min, then 0."""

import torch

from comfymesh.diffusion.sampling.model_sampling import ModelSampling

RHO = 7.0


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = RHO) -> torch.Tensor:
    """The schedule between any two sigmas (the KarrasScheduler node's)."""
    ramp = torch.linspace(0, 1, steps)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, torch.zeros(1)]).to(torch.float32)


def schedule(ms: ModelSampling, steps: int) -> torch.Tensor:
    return karras_sigmas(steps, float(ms.sigma_min), float(ms.sigma_max))
