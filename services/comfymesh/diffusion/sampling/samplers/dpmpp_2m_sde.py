"""dpmpp_2m_sde (midpoint or heun solver) and dpmpp_3m_sde: multistep DPM-Solver++ SDE variants, in half-log-SNR
time λ = log(α/σ) (−ln σ, or log((1 − σ)/σ) on a flow model, whose first σ of 1 is offset as ComfyUI does), with
α_t = σ_t·e^{λ_t} (1 up to float32 rounding, which ComfyUI keeps, on an SD model)."""

from __future__ import annotations

import torch

from comfymesh.diffusion.sampling.samplers.base import Denoiser, Sampler, SamplerEnv, half_log_snr, offset_first_sigma


def make_dpmpp_2m_sde(solver: str = "midpoint", on_device: bool = False) -> Sampler:
    def sample(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, env: SamplerEnv) -> torch.Tensor:
        if len(sigmas) <= 1:
            return x
        noise = env.brownian(x, sigmas, on_device)  # its σ range is the schedule's before the offset
        sigmas = offset_first_sigma(sigmas, env)
        values = sigmas.tolist()
        eta = env.eta
        old: torch.Tensor | None = None
        h_last: torch.Tensor | None = None
        for i in range(len(sigmas) - 1):
            denoised = model(x, sigmas[i])
            env.step(i, denoised, x)
            if values[i + 1] == 0:
                x = denoised
            else:
                lambda_s, lambda_t = half_log_snr(sigmas[i], env.flow), half_log_snr(sigmas[i + 1], env.flow)
                h = lambda_t - lambda_s
                h_eta = h * (eta + 1)
                alpha_t = sigmas[i + 1] * lambda_t.exp()
                x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
                if old is not None and h_last is not None:
                    r = h_last / h
                    if solver == "heun":
                        coef = (-h_eta).expm1().neg() / (-h_eta) + 1
                        x = x + alpha_t * coef * (1 / r) * (denoised - old)
                    else:
                        x = x + alpha_t * 0.5 * (-h_eta).expm1().neg() * (1 / r) * (denoised - old)
                if eta > 0 and env.s_noise > 0:
                    z = noise(sigmas[i], sigmas[i + 1], x)
                    x = x + z * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * env.s_noise
                h_last = h
            old = denoised
        return x

    return sample


def make_dpmpp_3m_sde(on_device: bool = False) -> Sampler:
    def sample(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, env: SamplerEnv) -> torch.Tensor:
        if len(sigmas) <= 1:
            return x
        noise = env.brownian(x, sigmas, on_device)  # its σ range is the schedule's before the offset
        sigmas = offset_first_sigma(sigmas, env)
        values = sigmas.tolist()
        eta = env.eta
        d_1: torch.Tensor | None = None
        d_2: torch.Tensor | None = None
        h_1: torch.Tensor | None = None
        h_2: torch.Tensor | None = None
        for i in range(len(sigmas) - 1):
            denoised = model(x, sigmas[i])
            env.step(i, denoised, x)
            if values[i + 1] == 0:
                x = denoised
            else:
                lambda_s, lambda_t = half_log_snr(sigmas[i], env.flow), half_log_snr(sigmas[i + 1], env.flow)
                h = lambda_t - lambda_s
                h_eta = h * (eta + 1)
                alpha_t = sigmas[i + 1] * lambda_t.exp()
                x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                if h_2 is not None and h_1 is not None and d_1 is not None and d_2 is not None:
                    r0, r1 = h_1 / h, h_2 / h
                    delta_0 = (denoised - d_1) / r0
                    delta_1 = (d_1 - d_2) / r1
                    d1 = delta_0 + (delta_0 - delta_1) * r0 / (r0 + r1)
                    d2 = (delta_0 - delta_1) / (r0 + r1)
                    phi_3 = phi_2 / h_eta - 0.5
                    x = x + (alpha_t * phi_2) * d1 - (alpha_t * phi_3) * d2
                elif h_1 is not None and d_1 is not None:
                    r = h_1 / h
                    x = x + (alpha_t * phi_2) * ((denoised - d_1) / r)
                if eta > 0 and env.s_noise > 0:
                    z = noise(sigmas[i], sigmas[i + 1], x)
                    x = x + z * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * env.s_noise
                h_1, h_2 = h, h_1
            d_1, d_2 = denoised, d_1
        return x

    return sample
