"""exponential: σ evenly spaced in log σ from σ_max to σ_min, then 0."""

import math

import torch

from comfymesh.diffusion.sampling.model_sampling import ModelSampling


def exponential_sigmas(steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """The schedule between any two sigmas (the ExponentialScheduler node's)."""
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), steps).exp()
    return torch.cat([sigmas, torch.zeros(1)]).to(torch.float32)


def schedule(ms: ModelSampling, steps: int) -> torch.Tensor:
    return exponential_sigmas(steps, float(ms.sigma_min), float(ms.sigma_max))
