"""Sampler forms ComfyUI switches to on flow (CONST) models, where x = (1 − σ)·x0 + σ·noise.

The ancestral step of all three: with r = 1 + (σ_{i+1}/σ_i − 1)·η the step goes down to σ_d = σ_{i+1}·r, then the
signal is rescaled to α_{i+1} = 1 − σ_{i+1} and noise of size √(σ_{i+1}² − σ_d²·α_{i+1}²/α_d²), α_d = 1 − σ_d, is
added (RfAncestral).
- euler_ancestral: x ← (σ_d/σ_i)·x + (1 − σ_d/σ_i)·D_i; the last step (σ = 0) returns D.
- dpm_2_ancestral: DPM-Solver-2's midpoint step to σ_d (σ_mid the geometric mean), Euler when σ_d = 0; a noise
  draw follows every midpoint step, whatever η.
- dpmpp_2s_ancestral: the midpoint σ_s halves the step in λ = log((1 − σ)/σ) (0.9999 from σ = 1, where λ is
  −∞); u = (σ_s/σ_i)·x + (1 − σ_s/σ_i)·D_i, then x ← (σ_d/σ_i)·x + (1 − σ_d/σ_i)·D(u, σ_s); noise only with η > 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from comfymesh.diffusion.sampling.samplers.base import Denoiser, SamplerEnv, StepNoise, to_d
from comfymesh.diffusion.sampling.samplers.dpm_2 import midpoint_step


@dataclass(frozen=True)
class RfAncestral:
    """One ancestral step of a flow model from σ to σ_next."""

    sigma_down: torch.Tensor
    signal_scale: torch.Tensor  # α_{i+1} / α_d
    renoise: torch.Tensor

    @classmethod
    def between(cls, sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float) -> RfAncestral:
        sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)
        alpha_next, alpha_down = 1 - sigma_next, 1 - sigma_down
        renoise = (sigma_next**2 - sigma_down**2 * alpha_next**2 / alpha_down**2) ** 0.5
        return cls(sigma_down, alpha_next / alpha_down, renoise)

    def add_noise(self, x: torch.Tensor, noise: StepNoise, s_noise: float) -> torch.Tensor:
        return self.signal_scale * x + noise(x) * s_noise * self.renoise


def _interpolate(x: torch.Tensor, denoised: torch.Tensor, sigma_to: torch.Tensor,
                 sigma: torch.Tensor) -> torch.Tensor:
    ratio = sigma_to / sigma
    return ratio * x + (1 - ratio) * denoised


def sample_euler_ancestral_rf(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor,
                              env: SamplerEnv) -> torch.Tensor:
    noise = env.default_noise(x)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        env.step(i, denoised, x)
        if float(sigma_next) == 0.0:
            x = denoised
            continue
        step = RfAncestral.between(sigma, sigma_next, env.eta)
        x = _interpolate(x, denoised, step.sigma_down, sigma)
        if env.eta > 0:
            x = step.add_noise(x, noise, env.s_noise)
    return x


def sample_dpm_2_ancestral_rf(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor,
                              env: SamplerEnv) -> torch.Tensor:
    noise = env.default_noise(x)
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        denoised = model(x, sigma)
        step = RfAncestral.between(sigma, sigmas[i + 1], env.eta)
        env.step(i, denoised, x)
        d = to_d(x, sigma, denoised)
        if float(step.sigma_down) == 0.0:
            x = x + d * (step.sigma_down - sigma)
        else:
            x = step.add_noise(midpoint_step(model, x, d, sigma, step.sigma_down), noise, env.s_noise)
    return x


def _rf_half_log_snr(sigma: torch.Tensor) -> torch.Tensor:
    return ((1 - sigma) / sigma).log()


def sample_dpmpp_2s_ancestral_rf(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor,
                                 env: SamplerEnv) -> torch.Tensor:
    noise = env.default_noise(x)
    values = sigmas.tolist()
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        denoised = model(x, sigma)
        step = RfAncestral.between(sigma, sigmas[i + 1], env.eta)
        env.step(i, denoised, x)
        if values[i + 1] == 0:
            x = x + to_d(x, sigma, denoised) * (step.sigma_down - sigma)
        else:
            if values[i] == 1.0:
                sigma_s = torch.tensor(0.9999, dtype=sigma.dtype)
            else:
                lam, lam_down = _rf_half_log_snr(sigma), _rf_half_log_snr(step.sigma_down)
                sigma_s = ((lam + 0.5 * (lam_down - lam)).exp() + 1) ** -1
            u = _interpolate(x, denoised, sigma_s, sigma)
            x = _interpolate(x, model(u, sigma_s), step.sigma_down, sigma)
        if values[i + 1] > 0 and env.eta > 0:
            x = step.add_noise(x, noise, env.s_noise)
    return x
