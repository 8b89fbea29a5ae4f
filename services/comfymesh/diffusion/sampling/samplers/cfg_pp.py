"""The CFG++ samplers (Chung et al. 2024, arXiv 2406.08070): each step renoises along the unconditional x0
prediction instead of the guided one, as ComfyUI's euler_cfg_pp, euler_ancestral_cfg_pp,
dpmpp_2s_ancestral_cfg_pp and dpmpp_2m_cfg_pp do. D is the guided prediction, U the unconditional one of the
same evaluation (see `uncond_source`).

euler(_ancestral)_cfg_pp work in half-log-SNR λ with α = σ·e^λ (1 on SD models, 1 − σ on flow models):
d = (x − α_i·U)/σ_i, (σ_d, σ_u) the ancestral split of σ_i/α_i → σ_{i+1}/α_{i+1}, then
x ← α_{i+1}·D + α_{i+1}·σ_d·d (+ α_{i+1}·σ_u·z); euler_cfg_pp is η = 0 without noise.
"""

from __future__ import annotations

import torch

from comfymesh.diffusion.sampling.samplers.base import (
    Denoiser,
    Sampler,
    SamplerEnv,
    ancestral_split,
    half_log_snr,
    last_uncond,
    sigma_of,
    t_of,
    to_d,
    uncond_source,
)


def make_euler_cfg_pp(ancestral: bool) -> Sampler:
    name = "euler_ancestral_cfg_pp" if ancestral else "euler_cfg_pp"

    def sample(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, env: SamplerEnv) -> torch.Tensor:
        source = uncond_source(model, name)
        eta, s_noise = (env.eta, env.s_noise) if ancestral else (0.0, 0.0)
        noise = env.default_noise(x)
        values = sigmas.tolist()
        for i in range(len(sigmas) - 1):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            denoised = model(x, sigma)
            uncond = last_uncond(source)
            env.step(i, denoised, x)
            if values[i + 1] == 0:
                x = denoised
                continue
            alpha_s = sigma * half_log_snr(sigma, env.flow).exp()
            alpha_t = sigma_next * half_log_snr(sigma_next, env.flow).exp()
            d = to_d(x, sigma, alpha_s * uncond)
            down, up = ancestral_split(sigma / alpha_s, sigma_next / alpha_t, eta)
            x = alpha_t * denoised + alpha_t * down * d
            if eta > 0 and s_noise > 0:
                x = x + alpha_t * noise(x) * s_noise * up
        return x

    return sample


def sample_dpmpp_2s_ancestral_cfg_pp(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor,
                                     env: SamplerEnv) -> torch.Tensor:
    """DPM-Solver++(2S) to σ_down from x + (D − U), midpoint r = ½, then ancestral noise."""
    source = uncond_source(model, "dpmpp_2s_ancestral_cfg_pp")
    noise = env.default_noise(x)
    values = sigmas.tolist()
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        uncond = last_uncond(source)
        down, up = ancestral_split(sigmas[i], sigmas[i + 1], env.eta)
        env.step(i, denoised, x)
        if float(down) == 0.0:
            x = denoised + to_d(x, sigmas[i], uncond) * down
        else:
            t, t_next = t_of(sigmas[i]), t_of(down)
            h = t_next - t
            s = t + h / 2
            x_2 = (sigma_of(s) / sigma_of(t)) * (x + (denoised - uncond)) - (-h / 2).expm1() * denoised
            denoised_2 = model(x_2, sigma_of(s))
            # ComfyUI reads the unconditional prediction again here, so it is the midpoint evaluation's
            uncond = last_uncond(source)
            x = (sigma_of(t_next) / sigma_of(t)) * (x + (denoised - uncond)) - (-h).expm1() * denoised_2
        if values[i + 1] > 0:
            x = x + noise(x) * env.s_noise * up
    return x


def sample_dpmpp_2m_cfg_pp(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, env: SamplerEnv) -> torch.Tensor:
    """x ← D − e^{−h}·U + e^{−h}·x, plus −(e^{−h} − 1)/(2r)·(D − U_{i−1}) once there is a previous step."""
    source = uncond_source(model, "dpmpp_2m_cfg_pp")
    values = sigmas.tolist()
    old_uncond: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        uncond = last_uncond(source)
        env.step(i, denoised, x)
        t, t_next = t_of(sigmas[i]), t_of(sigmas[i + 1])
        h = t_next - t
        if old_uncond is None or values[i + 1] == 0:
            mix = -torch.exp(-h) * uncond
        else:
            r = (t - t_of(sigmas[i - 1])) / h
            mix = -torch.exp(-h) * uncond - torch.expm1(-h) * (1 / (2 * r)) * (denoised - old_uncond)
        x = denoised + mix + torch.exp(-h) * x
        old_uncond = uncond
    return x
