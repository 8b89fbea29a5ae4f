"""sa_solver and sa_solver_pece: SA-Solver (Xue et al., NeurIPS 2023, arXiv 2309.05019), a stochastic Adams
predictor-corrector in data prediction, as ComfyUI runs it (predictor order 3, corrector order 4, τ = 1 for
σ between the schedule's 20 % and 80 % points and 0 elsewhere, s_noise 1).

In half-log-SNR λ (flow models: log((1 − σ)/σ), a first σ of 1 moved just below it), a step from λ_s to λ_t
with past predictions D_k at λ_k is x_t = (σ_t/σ_s)·e^{−τ²h}·x_s + Σ_k b_k·D_k with
b = α_t · V⁻ᵀ·c, V the Vandermonde matrix of the λ_k (powers 0…K−1), and
c_p = (1 + τ²)·∫_{λ_s}^{λ_t} e^{(1+τ²)(λ−λ_t)}·λ^p dλ = Σ_{k≤p} (−1)^{p−k}·p!/k!·(1 + τ²)^{−(p−k)}·(λ_t^k − λ_s^k·e^{−(1+τ²)h}).
The predictor adds noise σ_t·√(1 − e^{−2τ²h})·z; the corrector recomputes the same step with the new
prediction included (and the same noise); PECE evaluates the corrected point again. Orders drop near the end.
"""

from __future__ import annotations

import math

import torch

from comfymesh.diffusion.sampling.samplers.base import Denoiser, Sampler, SamplerEnv, half_log_snr, offset_first_sigma

PREDICTOR_ORDER = 3
CORRECTOR_ORDER = 4


def exponential_integrals(lam_s: torch.Tensor, lam_t: torch.Tensor, order: int, tau: float) -> torch.Tensor:
    """c_0 … c_{order−1} (see the module docstring)."""
    mul = 1 + tau**2
    decay = (-mul * (lam_t - lam_s)).exp()
    terms = [lam_t**k - lam_s**k * decay for k in range(order)]
    out = []
    for p in range(order):
        total = torch.zeros_like(lam_t)
        for k in range(p + 1):
            total = total + (-1) ** (p - k) * math.factorial(p) / math.factorial(k) / mul ** (p - k) * terms[k]
        out.append(total)
    return torch.stack(out)


def adams_coefficients(sigma_t: torch.Tensor, lams: torch.Tensor, lam_s: torch.Tensor, lam_t: torch.Tensor,
                       tau: float) -> torch.Tensor:
    """b_k for the predictions at `lams` (oldest first)."""
    n = lams.shape[0]
    c = exponential_integrals(lam_s, lam_t, n, tau)
    vandermonde = torch.stack([lams**p for p in range(n)])  # row p: λ_k^p
    return sigma_t * lam_t.exp() * torch.linalg.solve(vandermonde, c)


def _combine(preds: list[torch.Tensor], b: torch.Tensor) -> torch.Tensor:
    out = preds[0] * b[0].to(preds[0].device)
    for p, coeff in zip(preds[1:], b[1:], strict=True):
        out = out + p * coeff.to(p.device)
    return out


def make_sa_solver(pece: bool = False) -> Sampler:
    def sample(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, env: SamplerEnv) -> torch.Tensor:
        if len(sigmas) <= 1:
            return x
        noise = env.default_noise(x)
        sigmas = offset_first_sigma(sigmas, env)
        lams = half_log_snr(sigmas, env.flow)
        values = sigmas.tolist()
        start, end = env.percent_to_sigma(0.2), env.percent_to_sigma(0.8)

        def tau_of(sigma: float) -> float:
            return 1.0 if start >= sigma >= end else 0.0

        keep = max(PREDICTOR_ORDER, CORRECTOR_ORDER)
        lower_to_end = values[-1] == 0
        x_pred = x
        h = torch.zeros(())
        tau = 0.0
        step_noise = torch.zeros_like(x)
        preds: list[torch.Tensor] = []
        n = len(sigmas)
        for i in range(n - 1):
            denoised = model(x_pred, sigmas[i])
            env.step(i, denoised, x_pred)
            preds = [*preds, denoised][-keep:]
            p_order = min(PREDICTOR_ORDER, len(preds))
            c_order = 0 if i == 0 or (values[i + 1] == 0 and not pece) else min(CORRECTOR_ORDER, len(preds))
            if lower_to_end:
                p_order = min(p_order, n - 2 - i)
                c_order = min(c_order, n - 1 - i)
            if c_order == 0:
                x = x_pred
            else:
                b = adams_coefficients(sigmas[i], lams[i - c_order + 1:i + 1], lams[i - 1], lams[i], tau)
                x = sigmas[i] / sigmas[i - 1] * (-(tau**2) * h).exp() * x + _combine(preds[-c_order:], b)
                if tau > 0 and env.s_noise > 0:
                    x = x + step_noise
                if pece:
                    denoised = model(x, sigmas[i])
                    preds[-1] = denoised
            if values[i + 1] == 0:
                x_pred = denoised
                continue
            tau = tau_of(values[i + 1])
            b = adams_coefficients(sigmas[i + 1], lams[i - p_order + 1:i + 1], lams[i], lams[i + 1], tau)
            h = lams[i + 1] - lams[i]
            x_pred = sigmas[i + 1] / sigmas[i] * (-(tau**2) * h).exp() * x + _combine(preds[-p_order:], b)
            if tau > 0 and env.s_noise > 0:
                step_noise = noise(x) * sigmas[i + 1] * (-2 * tau**2 * h).expm1().neg().sqrt() * env.s_noise
                x_pred = x_pred + step_noise
        return x_pred

    return sample
