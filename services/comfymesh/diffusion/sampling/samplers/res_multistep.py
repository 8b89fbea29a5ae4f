"""res_multistep and its ancestral / CFG++ forms: the second-order multistep exponential integrator of
Zhang et al. 2023 (RES, arXiv 2308.02157) as ComfyUI runs it.

Each step goes to σ_d of the ancestral split (σ_{i+1} itself when η = 0). In t = −ln σ with h = t(σ_d) − t_i
and c₂ = (t_{i−1} − t(σ_d of the previous step))/h:
x ← e^{−h}·x + h·(b₁·D_i + b₂·D_{i−1}), b₁ = φ₁(−h) − φ₂(−h)/c₂, b₂ = φ₂(−h)/c₂, φ₁(z) = (e^z − 1)/z,
φ₂(z) = (φ₁(z) − 1)/z. The first step, and any step with σ_d = 0, is an Euler step; then noise σ_u·z.
CFG++: the step starts from x + (D − U) and integrates the unconditional prediction U (its Euler step is
x ← D + σ_d·(x − U)/σ_i), and U is what the next step remembers.
"""

from __future__ import annotations

import torch

from comfymesh.diffusion.sampling.samplers.base import (
    Denoiser,
    Sampler,
    SamplerEnv,
    UncondSource,
    ancestral_split,
    last_uncond,
    t_of,
    to_d,
    uncond_source,
)


def _phi1(z: torch.Tensor) -> torch.Tensor:
    return torch.expm1(z) / z


def _phi2(z: torch.Tensor) -> torch.Tensor:
    return (_phi1(z) - 1.0) / z


def make_res_multistep(ancestral: bool = False, cfg_pp: bool = False) -> Sampler:
    name = "res_multistep" + ("_ancestral" if ancestral else "") + ("_cfg_pp" if cfg_pp else "")

    def sample(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, env: SamplerEnv) -> torch.Tensor:
        source: UncondSource | None = uncond_source(model, name) if cfg_pp else None
        eta = env.eta if ancestral else 0.0
        noise = env.default_noise(x)
        values = sigmas.tolist()
        old_denoised: torch.Tensor | None = None
        old_down: torch.Tensor | None = None
        for i in range(len(sigmas) - 1):
            sigma = sigmas[i]
            denoised = model(x, sigma)
            uncond = last_uncond(source) if source is not None else denoised
            down, up = ancestral_split(sigma, sigmas[i + 1], eta)
            env.step(i, denoised, x)
            if float(down) == 0.0 or old_denoised is None or old_down is None:
                if source is not None:
                    x = denoised + to_d(x, sigma, uncond) * down
                else:
                    x = x + to_d(x, sigma, denoised) * (down - sigma)
            else:
                t, t_next = t_of(sigma), t_of(down)
                h = t_next - t
                c2 = (t_of(sigmas[i - 1]) - t_of(old_down)) / h
                b1 = torch.nan_to_num(_phi1(-h) - _phi2(-h) / c2, nan=0.0)
                b2 = torch.nan_to_num(_phi2(-h) / c2, nan=0.0)
                if source is not None:
                    x = x + (denoised - uncond)
                x = torch.exp(-h) * x + h * (b1 * uncond + b2 * old_denoised)
            if eta and values[i + 1] > 0:  # η = 0: σ_u is 0 and ComfyUI's draw adds nothing
                x = x + noise(x) * env.s_noise * up
            old_denoised = uncond
            old_down = down
        return x

    return sample


sample_res_multistep = make_res_multistep()
