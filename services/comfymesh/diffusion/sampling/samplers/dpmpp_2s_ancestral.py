"""dpmpp_2s_ancestral: DPM-Solver++(2S) single-step to σ_down with a midpoint, plus ancestral noise."""

from __future__ import annotations

import torch

from comfymesh.diffusion.sampling.samplers.base import Denoiser, SamplerEnv, ancestral_split, sigma_of, t_of, to_d


def sample_dpmpp_2s_ancestral(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor,
                              env: SamplerEnv) -> torch.Tensor:
    noise = env.default_noise(x)
    values = sigmas.tolist()
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        down, up = ancestral_split(sigmas[i], sigmas[i + 1], env.eta)
        env.step(i, denoised, x)
        if float(down) == 0.0:
            x = x + to_d(x, sigmas[i], denoised) * (down - sigmas[i])
        else:
            t, t_next = t_of(sigmas[i]), t_of(down)
            h = t_next - t
            s = t + h / 2
            x_2 = (sigma_of(s) / sigma_of(t)) * x - (-h / 2).expm1() * denoised
            denoised_2 = model(x_2, sigma_of(s))
            x = (sigma_of(t_next) / sigma_of(t)) * x - (-h).expm1() * denoised_2
        if values[i + 1] > 0:
            x = x + noise(x) * env.s_noise * up
    return x
