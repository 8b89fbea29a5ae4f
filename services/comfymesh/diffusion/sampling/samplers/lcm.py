"""lcm (latent consistency) and ddpm (ancestral DDPM in variance-preserving coordinates)."""

from __future__ import annotations

import torch

from comfymesh.diffusion.sampling.flow_sampling import noise_scaling
from comfymesh.diffusion.sampling.samplers.base import Denoiser, SamplerEnv


def sample_lcm(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, env: SamplerEnv) -> torch.Tensor:
    """x ← D_i, re-noised to σ_{i+1} with a fresh draw by the model's noise scaling (a flow model's
    σ·noise + (1 − σ)·D_i)."""
    noise = env.default_noise(x)
    values = sigmas.tolist()
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        env.step(i, denoised, x)
        x = denoised
        if values[i + 1] > 0:
            x = noise_scaling(sigmas[i + 1], noise(x), x) if env.flow else x + sigmas[i + 1] * noise(x)
    return x


def sample_ddpm(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, env: SamplerEnv) -> torch.Tensor:
    noise = env.default_noise(x)
    values = sigmas.tolist()
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        env.step(i, denoised, x)
        eps = (x - denoised) / sigma
        x_vp = x / torch.sqrt(1.0 + sigma**2.0)
        a_bar = 1 / (sigma * sigma + 1)
        a_bar_next = 1 / (sigma_next * sigma_next + 1)
        alpha = a_bar / a_bar_next
        mu = (1.0 / alpha).sqrt() * (x_vp - (1 - alpha) * eps / (1 - a_bar).sqrt())
        if values[i + 1] > 0:
            mu = mu + ((1 - alpha) * (1.0 - a_bar_next) / (1.0 - a_bar)).sqrt() * noise(x)
            x = mu * torch.sqrt(1.0 + sigma_next**2.0)
        else:
            x = mu
    return x
