"""Sampler forms ComfyUI switches to on flow (CONST) models, where x = (1 − σ)·x0 + σ·noise.

euler_ancestral: with r = 1 + (σ_{i+1}/σ_i − 1)·η, the step goes down to σ_d = σ_{i+1}·r by interpolating
x ← (σ_d/σ_i)·x + (1 − σ_d/σ_i)·D_i, then rescales the signal to α_{i+1} = 1 − σ_{i+1} and adds noise of
size √(σ_{i+1}² − σ_d²·α_{i+1}²/α_d²), α_d = 1 − σ_d. The last step (σ = 0) returns D.
"""

from __future__ import annotations

import torch

from comfymesh.diffusion.sampling.samplers.base import Denoiser, SamplerEnv


def sample_euler_ancestral_rf(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor,
                              env: SamplerEnv) -> torch.Tensor:
    noise = env.default_noise(x)
    eta = env.eta
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        env.step(i, denoised, x)
        if float(sigma_next) == 0.0:
            x = denoised
            continue
        sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)
        alpha_next, alpha_down = 1 - sigma_next, 1 - sigma_down
        renoise = (sigma_next**2 - sigma_down**2 * alpha_next**2 / alpha_down**2) ** 0.5
        ratio = sigma_down / sigma
        x = ratio * x + (1 - ratio) * denoised
        if eta > 0:
            x = (alpha_next / alpha_down) * x + noise(x) * env.s_noise * renoise
    return x
