"""beta (α = β = 0.6 unless given): timesteps at Beta-distribution quantiles, duplicates dropped, then 0."""

import numpy as np
import torch

from comfymesh.diffusion.sampling.model_sampling import ModelSampling

ALPHA = 0.6
BETA = 0.6


def schedule(ms: ModelSampling, steps: int, alpha: float = ALPHA, beta: float = BETA) -> torch.Tensor:
    """The scheduler, or the BetaSamplingScheduler node with its own α and β."""
    total = len(ms.sigmas) - 1
    u = 1.0 - np.arange(steps, dtype=np.float64) / steps
    import scipy.stats  # here, not at module level: scipy adds ~1 s to every stage start

    ts = np.rint(scipy.stats.beta.ppf(u, alpha, beta) * total)  # rint rounds half to even
    values: list[float] = []
    last = -1
    for t in ts:
        if int(t) != last:
            values.append(float(ms.sigmas[int(t)]))
            last = int(t)
    return torch.tensor([*values, 0.0], dtype=torch.float32)
