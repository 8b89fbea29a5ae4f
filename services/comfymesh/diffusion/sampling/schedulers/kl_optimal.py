"""kl_optimal: σ interpolated linearly in atan σ from σ_max to σ_min, then 0 (n = 1 gives NaN)."""

import math

import torch

from comfymesh.diffusion.sampling.model_sampling import ModelSampling


def schedule(ms: ModelSampling, steps: int) -> torch.Tensor:
    lo, hi = math.atan(float(ms.sigma_min)), math.atan(float(ms.sigma_max))
    w = torch.arange(steps, dtype=torch.float32) / (steps - 1) if steps > 1 else torch.full((1,), float("nan"))
    sigmas = torch.tan(w * lo + (1 - w) * hi)
    return torch.cat([sigmas, torch.zeros(1)]).to(torch.float32)
