"""euler, ddim (the same update) and euler_ancestral (Karras et al. 2022, Algorithm 1 / k-diffusion)."""

from __future__ import annotations

import torch

from comfymesh.diffusion.sampling.samplers.base import Denoiser, SamplerEnv, ancestral_split, to_d


def sample_euler(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, env: SamplerEnv) -> torch.Tensor:
    """x ← x + d_i·(σ_{i+1} − σ_i)."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        env.step(i, denoised, x)
        x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x


def sample_euler_ancestral(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor,
                           env: SamplerEnv) -> torch.Tensor:
    """Euler to σ_down, then fresh noise of size σ_up; no draw when σ_down is 0."""
    noise = env.default_noise(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        down, up = ancestral_split(sigmas[i], sigmas[i + 1], env.eta)
        env.step(i, denoised, x)
        if float(down) == 0.0:
            x = denoised
        else:
            x = x + to_d(x, sigmas[i], denoised) * (down - sigmas[i])
            x = x + noise(x) * env.s_noise * up
    return x
