"""gradient_estimation (Permenter & Yuan, "Interpreting and improving diffusion models from an optimization
perspective", ICML 2024) and its CFG++ form, as ComfyUI runs them with γ = 2:
an Euler step, then from the second step on x ← x + (γ − 1)·(d_i − d_{i−1})·(σ_{i+1} − σ_i). CFG++ takes
d from the unconditional prediction and steps as x ← D + σ_{i+1}·d. A step to σ = 0 returns D.
"""

from __future__ import annotations

import torch

from comfymesh.diffusion.sampling.samplers.base import (
    Denoiser,
    Sampler,
    SamplerEnv,
    UncondSource,
    last_uncond,
    to_d,
    uncond_source,
)

GAMMA = 2.0


def make_gradient_estimation(cfg_pp: bool = False) -> Sampler:
    name = "gradient_estimation_cfg_pp" if cfg_pp else "gradient_estimation"

    def sample(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, env: SamplerEnv) -> torch.Tensor:
        source: UncondSource | None = uncond_source(model, name) if cfg_pp else None
        values = sigmas.tolist()
        old_d: torch.Tensor | None = None
        for i in range(len(sigmas) - 1):
            denoised = model(x, sigmas[i])
            d = to_d(x, sigmas[i], last_uncond(source) if source is not None else denoised)
            env.step(i, denoised, x)
            dt = sigmas[i + 1] - sigmas[i]
            if values[i + 1] == 0:
                x = denoised
            else:
                x = denoised + d * sigmas[i + 1] if source is not None else x + d * dt
                if old_d is not None:
                    x = x + (GAMMA - 1) * (d - old_d) * dt
            old_d = d
        return x

    return sample
