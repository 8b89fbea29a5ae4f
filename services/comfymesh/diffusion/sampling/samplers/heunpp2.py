"""heunpp2 (Heun++ from the MIT-licensed sd-webui-samplers-scheduler, as ComfyUI runs it, no churn).

With d_k = (x_k − D(x_k, σ_k))/σ_k along Euler predictions x_2 = x + d·Δ, x_3 = x_2 + d_2·Δ':
- the step to the schedule's last σ is an Euler step;
- the step before it averages d and d_2 with weights 1 − w₂, w₂ = σ_{i+1}/(2σ_0);
- other steps look two sigmas ahead: 1 − w₂ − w₃, w₂ = σ_{i+1}/(3σ_0), w₃ = σ_{i+2}/(3σ_0).
"""

from __future__ import annotations

import torch

from comfymesh.diffusion.sampling.samplers.base import Denoiser, SamplerEnv, to_d


def sample_heunpp2(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, env: SamplerEnv) -> torch.Tensor:
    values = sigmas.tolist()
    end = values[-1]
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        d = to_d(x, sigma, denoised)
        env.step(i, denoised, x)
        dt = sigma_next - sigma
        if values[i + 1] == end:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = to_d(x_2, sigma_next, model(x_2, sigma_next))
        if values[i + 2] == end:
            w2 = sigma_next / (2 * sigmas[0])
            x = x + (d * (1 - w2) + d_2 * w2) * dt
            continue
        x_3 = x_2 + d_2 * (sigmas[i + 2] - sigma_next)
        d_3 = to_d(x_3, sigmas[i + 2], model(x_3, sigmas[i + 2]))
        w2 = sigma_next / (3 * sigmas[0])
        w3 = sigmas[i + 2] / (3 * sigmas[0])
        x = x + ((1 - w2 - w3) * d + w2 * d_2 + w3 * d_3) * dt
    return x
