"""res_multistep: the second-order multistep exponential integrator of Zhang et al. 2023 (RES,
arXiv 2308.02157) in ComfyUI's deterministic form (η = 0).

In t = −ln σ with h = t_{i+1} − t_i and c₂ = (t_{i−1} − t_i)/h:
x ← e^{−h}·x + h·(b₁·D_i + b₂·D_{i−1}), b₁ = φ₁(−h) − φ₂(−h)/c₂, b₂ = φ₂(−h)/c₂, φ₁(z) = (e^z − 1)/z,
φ₂(z) = (φ₁(z) − 1)/z. The first step, and any step to σ = 0, is an Euler step.
"""

from __future__ import annotations

import torch

from comfymesh.diffusion.sampling.samplers.base import Denoiser, SamplerEnv, t_of, to_d


def _phi1(z: torch.Tensor) -> torch.Tensor:
    return torch.expm1(z) / z


def _phi2(z: torch.Tensor) -> torch.Tensor:
    return (_phi1(z) - 1.0) / z


def sample_res_multistep(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, env: SamplerEnv) -> torch.Tensor:
    old_denoised: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        env.step(i, denoised, x)
        if float(sigma_next) == 0.0 or old_denoised is None:
            x = x + to_d(x, sigma, denoised) * (sigma_next - sigma)
        else:
            t, t_next = t_of(sigma), t_of(sigma_next)
            h = t_next - t
            c2 = (t_of(sigmas[i - 1]) - t_of(sigmas[i])) / h  # the previous target is σ_i itself when η = 0
            b1 = torch.nan_to_num(_phi1(-h) - _phi2(-h) / c2, nan=0.0)
            b2 = torch.nan_to_num(_phi2(-h) / c2, nan=0.0)
            x = torch.exp(-h) * x + h * (b1 * denoised + b2 * old_denoised)
        old_denoised = denoised
    return x
