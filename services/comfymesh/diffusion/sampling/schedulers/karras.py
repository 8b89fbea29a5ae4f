"""karras (Karras et al. 2022, ρ = 7): interpolate σ^(1/ρ) linearly from σ_max to σ_min, then 0."""

import torch

from comfymesh.diffusion.sampling.model_sampling import ModelSampling

RHO = 7.0


def schedule(ms: ModelSampling, steps: int) -> torch.Tensor:
    sigma_min, sigma_max = float(ms.sigma_min), float(ms.sigma_max)
    ramp = torch.linspace(0, 1, steps)
    lo, hi = sigma_min ** (1 / RHO), sigma_max ** (1 / RHO)
    sigmas = (hi + ramp * (lo - hi)) ** RHO
    return torch.cat([sigmas, torch.zeros(1)]).to(torch.float32)
