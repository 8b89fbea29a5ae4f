"""dpmpp_sde: DPM-Solver++ stochastic single-step (r = ½) with Brownian-tree noise, in half-log-SNR time
λ = log(α/σ) (−ln σ, or log((1 − σ)/σ) on a flow model, whose first σ of 1 is offset as ComfyUI does)."""

from __future__ import annotations

import torch

from comfymesh.diffusion.sampling.samplers.base import (
    Denoiser,
    Sampler,
    SamplerEnv,
    ancestral_split,
    half_log_snr,
    offset_first_sigma,
    sigma_of_half_log_snr,
)

R = 0.5


def make_dpmpp_sde(on_device: bool = False) -> Sampler:
    def sample_dpmpp_sde(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, env: SamplerEnv) -> torch.Tensor:
        if len(sigmas) <= 1:
            return x
        noise = env.brownian(x, sigmas, on_device)  # its σ range is the schedule's before the offset
        sigmas = offset_first_sigma(sigmas, env)
        values = sigmas.tolist()
        fac = 1 / (2 * R)
        noisy = env.eta > 0 and env.s_noise > 0
        for i in range(len(sigmas) - 1):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            denoised = model(x, sigma)
            env.step(i, denoised, x)
            if values[i + 1] == 0:
                x = denoised
                continue
            lam_s, lam_t = half_log_snr(sigma, env.flow), half_log_snr(sigma_next, env.flow)
            lam_mid = lam_s + R * (lam_t - lam_s)
            sigma_mid = sigma_of_half_log_snr(lam_mid, env.flow)
            alpha_s, alpha_mid, alpha_t = sigma * lam_s.exp(), sigma_mid * lam_mid.exp(), sigma_next * lam_t.exp()
            # stage 1: an ancestral step to the midpoint in λ
            down, up = ancestral_split(lam_s.neg().exp(), lam_mid.neg().exp(), env.eta)
            h = down.log().neg() - lam_s
            x_2 = (alpha_mid / alpha_s) * (-h).exp() * x - alpha_mid * (-h).expm1() * denoised
            if noisy:
                x_2 = x_2 + alpha_mid * noise(sigma, sigma_mid, x) * env.s_noise * up
            denoised_2 = model(x_2, sigma_mid)
            # stage 2: the full step with the combined estimate (all weight on D' for r = ½)
            down, up = ancestral_split(lam_s.neg().exp(), lam_t.neg().exp(), env.eta)
            h = down.log().neg() - lam_s
            denoised_d = (1 - fac) * denoised + fac * denoised_2
            x = (alpha_t / alpha_s) * (-h).exp() * x - alpha_t * (-h).expm1() * denoised_d
            if noisy:
                x = x + alpha_t * noise(sigma, sigma_next, x) * env.s_noise * up
        return x

    return sample_dpmpp_sde
