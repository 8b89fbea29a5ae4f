"""dpmpp_sde: DPM-Solver++ stochastic single-step (r = ½) with Brownian-tree noise."""

from __future__ import annotations

import torch

from comfymesh.diffusion.sampling.samplers.base import Denoiser, SamplerEnv, ancestral_split, sigma_of, t_of

R = 0.5


def make_dpmpp_sde(on_device: bool = False):
    def sample_dpmpp_sde(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, env: SamplerEnv) -> torch.Tensor:
        noise = env.brownian(x, sigmas, on_device)
        values = sigmas.tolist()
        fac = 1 / (2 * R)
        for i in range(len(sigmas) - 1):
            denoised = model(x, sigmas[i])
            env.step(i, denoised, x)
            if values[i + 1] == 0:
                x = denoised
                continue
            t, t_next = t_of(sigmas[i]), t_of(sigmas[i + 1])
            h = t_next - t
            s = t + h * R
            # stage 1: ancestral step to the midpoint in t
            down, up = ancestral_split(sigma_of(t), sigma_of(s), env.eta)
            s_ = t_of(down)
            x_2 = (sigma_of(s_) / sigma_of(t)) * x - (t - s_).expm1() * denoised
            x_2 = x_2 + noise(sigma_of(t), sigma_of(s), x) * env.s_noise * up
            denoised_2 = model(x_2, sigma_of(s))
            # stage 2: the full step with the combined estimate (all weight on D' for r = ½)
            down, up = ancestral_split(sigma_of(t), sigma_of(t_next), env.eta)
            t_next_ = t_of(down)
            denoised_d = (1 - fac) * denoised + fac * denoised_2
            x = (sigma_of(t_next_) / sigma_of(t)) * x - (t - t_next_).expm1() * denoised_d
            x = x + noise(sigma_of(t), sigma_of(t_next), x) * env.s_noise * up
        return x

    return sample_dpmpp_sde
