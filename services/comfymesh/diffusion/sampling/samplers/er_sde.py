"""er_sde: the extended reverse-time SDE solver (Cui et al. 2023, arXiv 2309.06169, VP ER-SDE-Solver-3), as
ComfyUI runs it (noise scaler f(λ) = λ·(e^{λ^0.3} + 10), up to 3 stages, s_noise 1).

In λ = σ/α (e^{−half-log-SNR}; flow models: σ/(1 − σ), their first σ of 1 moved just below it):
x ← (α_{i+1}/α_i)·r·x + α_{i+1}·(1 − r)·D, r = f(λ_{i+1})/f(λ_i); from the second step a first-difference
term, from the third a second-difference one, their integrals ∫dλ/f and ∫(λ − λ_i)dλ/f by a 200-point
Riemann sum from λ_{i+1}; then noise α_{i+1}·√(λ_{i+1}² − λ_i²·r²)·z. A step to σ = 0 returns D.
"""

from __future__ import annotations

import torch

from comfymesh.diffusion.sampling.samplers.base import Denoiser, SamplerEnv, half_log_snr, offset_first_sigma

STAGES = 3
POINTS = 200.0


def _scaler(v: torch.Tensor) -> torch.Tensor:
    return v * ((v**0.3).exp() + 10.0)


def sample_er_sde(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, env: SamplerEnv) -> torch.Tensor:
    s_noise = env.s_noise
    noise = env.default_noise(x)
    index = torch.arange(0, POINTS, dtype=torch.float32, device=x.device)
    sigmas = offset_first_sigma(sigmas, env)
    lams = half_log_snr(sigmas, env.flow).neg().exp()
    values = sigmas.tolist()
    old: torch.Tensor | None = None
    old_d: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        env.step(i, denoised, x)
        stage = min(STAGES, i + 1)
        if values[i + 1] == 0:
            x = denoised
        else:
            lam_s, lam_t = lams[i], lams[i + 1]
            alpha_s, alpha_t = sigmas[i] / lam_s, sigmas[i + 1] / lam_t
            r = _scaler(lam_t) / _scaler(lam_s)
            x = alpha_t / alpha_s * r * x + alpha_t * (1 - r) * denoised
            if stage >= 2 and old is not None:
                dt = lam_t - lam_s
                step = -dt / POINTS
                pos = lam_t + index * step
                scaled = _scaler(pos)
                s = torch.sum(1 / scaled) * step
                dd = (denoised - old) / (lam_s - lams[i - 1])
                x = x + alpha_t * (dt + s * _scaler(lam_t)) * dd
                if stage >= 3 and old_d is not None:
                    s_u = torch.sum((pos - lam_s) / scaled) * step
                    du = (dd - old_d) / ((lam_s - lams[i - 2]) / 2)
                    x = x + alpha_t * ((dt**2) / 2 + s_u * _scaler(lam_t)) * du
                old_d = dd
            if s_noise > 0:
                spread = (lam_t**2 - lam_s**2 * r**2).sqrt().nan_to_num(nan=0.0)
                x = x + alpha_t * noise(x) * s_noise * spread
        old = denoised
    return x
