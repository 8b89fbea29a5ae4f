"""ddim_uniform: table entries 1, 1+s, 1+2s, … (s = ⌊1000/n⌋) from the top down, then 0.

May give more than n steps (n = 30 → 31), and does not start at σ_max.
"""

import torch

from comfymesh.diffusion.sampling.model_sampling import ModelSampling


def schedule(ms: ModelSampling, steps: int) -> torch.Tensor:
    stride = max(len(ms.sigmas) // steps, 1)
    values = [float(ms.sigmas[i]) for i in range(1, len(ms.sigmas), stride)]
    return torch.tensor([*reversed(values), 0.0], dtype=torch.float32)
