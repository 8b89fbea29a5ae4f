"""simple: every (1000/n)-th table entry from the top, then 0."""

import torch

from comfymesh.diffusion.sampling.model_sampling import ModelSampling


def schedule(ms: ModelSampling, steps: int) -> torch.Tensor:
    stride = len(ms.sigmas) / steps
    values = [float(ms.sigmas[-(1 + int(k * stride))]) for k in range(steps)]
    return torch.tensor([*values, 0.0], dtype=torch.float32)
