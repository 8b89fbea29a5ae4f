"""linear_quadratic (τ = 0.025): linear first half, quadratic second half, scaled by σ_max."""

import torch

from comfymesh.diffusion.sampling.model_sampling import ModelSampling

THRESHOLD = 0.025


def schedule(ms: ModelSampling, steps: int) -> torch.Tensor:
    if steps == 1:
        return torch.tensor([float(ms.sigma_max), 0.0], dtype=torch.float32)
    linear = steps // 2
    quad = steps - linear
    diff = linear - THRESHOLD * steps
    a = diff / (linear * quad**2)
    b = THRESHOLD / linear - 2 * diff / quad**2
    c = a * linear**2
    u = [THRESHOLD * i / linear for i in range(linear)]
    u += [a * i**2 + b * i + c for i in range(linear, steps)]
    u.append(1.0)
    # the float32 multiply by the float32 σ_max matches ComfyUI's rounding
    return torch.tensor([1.0 - x for x in u], dtype=torch.float32) * ms.sigma_max
