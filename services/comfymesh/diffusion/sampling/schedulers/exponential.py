"""exponential: σ evenly spaced in log σ from σ_max to σ_min, then 0."""

import math

import torch

from comfymesh.diffusion.sampling.model_sampling import ModelSampling


def schedule(ms: ModelSampling, steps: int) -> torch.Tensor:
    sigmas = torch.linspace(math.log(float(ms.sigma_max)), math.log(float(ms.sigma_min)), steps).exp()
    return torch.cat([sigmas, torch.zeros(1)]).to(torch.float32)
