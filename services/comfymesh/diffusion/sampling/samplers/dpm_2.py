"""dpm_2 and dpm_2_ancestral: a midpoint step at the geometric mean of the two sigmas."""

from __future__ import annotations

import torch

from comfymesh.diffusion.sampling.samplers.base import Denoiser, SamplerEnv, ancestral_split, to_d


def midpoint_step(model: Denoiser, x: torch.Tensor, d: torch.Tensor, sigma: torch.Tensor,
                  sigma_to: torch.Tensor) -> torch.Tensor:
    """DPM-Solver-2 from σ to σ_to through the derivative at their geometric mean."""
    sigma_mid = sigma.log().lerp(sigma_to.log(), 0.5).exp()
    x_2 = x + d * (sigma_mid - sigma)
    d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid))
    return x + d_2 * (sigma_to - sigma)


def sample_dpm_2(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, env: SamplerEnv) -> torch.Tensor:
    values = sigmas.tolist()
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        d = to_d(x, sigmas[i], denoised)
        env.step(i, denoised, x)
        if values[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
        else:
            x = midpoint_step(model, x, d, sigmas[i], sigmas[i + 1])
    return x


def sample_dpm_2_ancestral(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor,
                           env: SamplerEnv) -> torch.Tensor:
    noise = env.default_noise(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        down, up = ancestral_split(sigmas[i], sigmas[i + 1], env.eta)
        d = to_d(x, sigmas[i], denoised)
        env.step(i, denoised, x)
        if float(down) == 0.0:
            x = x + d * (down - sigmas[i])
        else:
            x = midpoint_step(model, x, d, sigmas[i], down)
            x = x + noise(x) * env.s_noise * up
    return x
