"""seeds_2, seeds_3 (SEEDS, Gonzalez et al., NeurIPS 2023, arXiv 2305.14267: stochastic explicit exponential
derivative-free solvers, VP data prediction) and exp_heun_2_x0(_sde) (SEEDS-2 with r = 1 and the φ₂ update),
as ComfyUI runs them with η = 1, s_noise = 1 unless noted.

In half-log-SNR λ (−ln σ; log((1 − σ)/σ) on flow models, whose first σ of 1 moves just below it), with
h = λ_{i+1} − λ_i, ĥ = (1 + η)h, α = σ·e^λ and stage points λ_s + r·h:
x_r = (σ_r/σ_i)·e^{−rhη}·x − α_r·(e^{−rĥ} − 1)·D (+ σ_r·√(1 − e^{−2rhη})·z), and the final update combines
the stage predictions by φ₁ (seeds_2: D lerped to D_2 by 1/(2r)) or φ₂ weights (h·φ₂(z) = (e^z − 1 − z)/z).
Each later segment's noise carries the earlier one forward, so the noise is one Brownian-like path.
"""

from __future__ import annotations

import torch

from comfymesh.diffusion.sampling.samplers.base import (
    Denoiser,
    Sampler,
    SamplerEnv,
    half_log_snr,
    offset_first_sigma,
    sigma_of_half_log_snr,
)


def _phi1(z: torch.Tensor) -> torch.Tensor:
    """h·φ₁(h) of exponential integrators."""
    return torch.expm1(z)


def _phi2(z: torch.Tensor) -> torch.Tensor:
    """h·φ₂(h)."""
    return (torch.expm1(z) - z) / z


def make_seeds_2(r: float = 0.5, solver: str = "phi_1", stochastic: bool = True) -> Sampler:
    def sample(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, env: SamplerEnv) -> torch.Tensor:
        eta, s_noise = (env.eta, env.s_noise) if stochastic else (0.0, 0.0)
        inject = eta > 0 and s_noise > 0
        noise = env.default_noise(x)
        sigmas = offset_first_sigma(sigmas, env)
        values = sigmas.tolist()
        fac = 1 / (2 * r)
        for i in range(len(sigmas) - 1):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            denoised = model(x, sigma)
            env.step(i, denoised, x)
            if values[i + 1] == 0:
                x = denoised
                continue
            lam_s, lam_t = half_log_snr(sigma, env.flow), half_log_snr(sigma_next, env.flow)
            h = lam_t - lam_s
            h_eta = h * (eta + 1)
            lam_1 = torch.lerp(lam_s, lam_t, r)
            sigma_1 = sigma_of_half_log_snr(lam_1, env.flow)
            alpha_1 = sigma_1 * lam_1.exp()
            alpha_t = sigma_next * lam_t.exp()
            x_2 = sigma_1 / sigma * (-r * h * eta).exp() * x - alpha_1 * _phi1(-r * h_eta) * denoised
            sde = torch.zeros_like(x)
            if inject:
                sde = (-2 * r * h * eta).expm1().neg().sqrt() * noise(x)
                x_2 = x_2 + sde * sigma_1 * s_noise
            denoised_2 = model(x_2, sigma_1)
            if solver == "phi_1":
                mixed = torch.lerp(denoised, denoised_2, fac)
                x = sigma_next / sigma * (-h * eta).exp() * x - alpha_t * _phi1(-h_eta) * mixed
            else:
                b2 = _phi2(-h_eta) / r
                b1 = _phi1(-h_eta) - b2
                x = sigma_next / sigma * (-h * eta).exp() * x - alpha_t * (b1 * denoised + b2 * denoised_2)
            if inject:
                seg = (r - 1) * h * eta
                sde = sde * seg.exp() + seg.mul(2).expm1().neg().sqrt() * noise(x)
                x = x + sde * sigma_next * s_noise
        return x

    return sample


def sample_seeds_3(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, env: SamplerEnv,
                   r_1: float = 1 / 3, r_2: float = 2 / 3) -> torch.Tensor:
    eta, s_noise = env.eta, env.s_noise
    inject = eta > 0 and s_noise > 0
    noise = env.default_noise(x)
    sigmas = offset_first_sigma(sigmas, env)
    values = sigmas.tolist()
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        env.step(i, denoised, x)
        if values[i + 1] == 0:
            x = denoised
            continue
        lam_s, lam_t = half_log_snr(sigma, env.flow), half_log_snr(sigma_next, env.flow)
        h = lam_t - lam_s
        h_eta = h * (eta + 1)
        lam_1, lam_2 = torch.lerp(lam_s, lam_t, r_1), torch.lerp(lam_s, lam_t, r_2)
        sigma_1, sigma_2 = sigma_of_half_log_snr(lam_1, env.flow), sigma_of_half_log_snr(lam_2, env.flow)
        alpha_1, alpha_2 = sigma_1 * lam_1.exp(), sigma_2 * lam_2.exp()
        alpha_t = sigma_next * lam_t.exp()
        # stage 1
        x_2 = sigma_1 / sigma * (-r_1 * h * eta).exp() * x - alpha_1 * _phi1(-r_1 * h_eta) * denoised
        sde = torch.zeros_like(x)
        if inject:
            sde = (-2 * r_1 * h * eta).expm1().neg().sqrt() * noise(x)
            x_2 = x_2 + sde * sigma_1 * s_noise
        denoised_2 = model(x_2, sigma_1)
        # stage 2
        a2 = r_2 / r_1 * _phi2(-r_2 * h_eta)
        a1 = _phi1(-r_2 * h_eta) - a2
        x_3 = sigma_2 / sigma * (-r_2 * h * eta).exp() * x - alpha_2 * (a1 * denoised + a2 * denoised_2)
        if inject:
            seg = (r_1 - r_2) * h * eta
            sde = sde * seg.exp() + seg.mul(2).expm1().neg().sqrt() * noise(x)
            x_3 = x_3 + sde * sigma_2 * s_noise
        denoised_3 = model(x_3, sigma_2)
        # stage 3
        b3 = _phi2(-h_eta) / r_2
        b1 = _phi1(-h_eta) - b3
        x = sigma_next / sigma * (-h * eta).exp() * x - alpha_t * (b1 * denoised + b3 * denoised_3)
        if inject:
            seg = (r_2 - 1) * h * eta
            sde = sde * seg.exp() + seg.mul(2).expm1().neg().sqrt() * noise(x)
            x = x + sde * sigma_next * s_noise
    return x
