"""normal: σ at n timesteps evenly spaced from 999 to 0 (log-interpolated), then 0."""

import torch

from comfymesh.diffusion.sampling.model_sampling import ModelSampling


def schedule(ms: ModelSampling, steps: int) -> torch.Tensor:
    start = float(ms.timestep(ms.sigma_max))
    end = float(ms.timestep(ms.sigma_min))
    t = torch.linspace(start, end, steps)
    return torch.cat([ms.sigma(t), torch.zeros(1)]).to(torch.float32)
