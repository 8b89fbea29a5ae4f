"""deis: DEIS (Zhang & Chen 2022, "tab" form, as zju-pi's diff-solvers write it, Apache-2.0; ComfyUI runs it
with order 3).

The σ schedule is mapped to the time of a VP SDE fitted to σ ∈ [0.002, 80] at ε = 10⁻³:
β_d = 2·(ln(σ_min² + 1)/ε − ln(σ_max² + 1))/(ε − 1), β_0 = ln(σ_max² + 1) − β_d/2, β_1 = β_d + β_0,
t(σ) = (√(β_0² + 2β_d·ln(σ² + 1)) − β_0)/β_d, α(τ) = exp(−τ²(β_1 − β_0)/2 − τβ_0).
Step i of order k (min(i + 1, 3); 1 for a step to σ = 0) is x ← x + Σ_j C_ij·d_{i−j}, d = (x − D)/σ, where
C_ij integrates −½·(d ln α/dτ)/√(α(1 − α)) times the Lagrange basis polynomial of t_{i−j} over t_i, …,
t_{i−k+1} from t_i to t_{i+1} by a 10 000-point left Riemann sum; order 1 is an Euler step.
"""

from __future__ import annotations

import torch

from comfymesh.diffusion.sampling.samplers.base import Denoiser, SamplerEnv, to_d

MAX_ORDER = 3
POINTS = 10000
EPS_S, SIGMA_MIN, SIGMA_MAX = 1e-3, 0.002, 80.0


def vp_times(sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(t of each σ, β_0, β_1), float32 as ComfyUI computes them."""
    log_min = (torch.tensor(SIGMA_MIN) ** 2 + 1).log()
    log_max = (torch.tensor(SIGMA_MAX) ** 2 + 1).log()
    beta_d = 2 * (log_min / EPS_S - log_max) / (EPS_S - 1)
    beta_0 = log_max - 0.5 * beta_d
    s = sigmas.detach().cpu()
    t = ((beta_0**2 + 2 * beta_d * (s**2 + 1).log()).sqrt() - beta_0) / beta_d
    return t, beta_0, beta_d + beta_0


def deis_coefficients(sigmas: torch.Tensor, max_order: int = MAX_ORDER) -> list[list[torch.Tensor]]:
    """C_ij for every step (an empty list for first-order steps)."""
    t, beta_0, beta_1 = vp_times(sigmas)
    out: list[list[torch.Tensor]] = []
    for i in range(len(t) - 1):
        order = min(i + 1, max_order)
        if order == 1:
            out.append([])
            continue
        taus = torch.linspace(float(t[i]), float(t[i + 1]), POINTS)
        dtau = (t[i + 1] - t[i]) / POINTS
        alpha = torch.exp(-0.5 * taus**2 * (beta_1 - beta_0) - taus * beta_0)
        dlog_alpha = -(taus * (beta_1 - beta_0) + beta_0)
        integrand = -0.5 * dlog_alpha / torch.sqrt(alpha * (1 - alpha))
        nodes = [t[i - k] for k in range(order)]
        row = []
        for j in range(order):
            basis = torch.ones_like(taus)
            for k in range(order):
                if k != j:
                    basis = basis * (taus - nodes[k]) / (nodes[j] - nodes[k])
            row.append(torch.sum(integrand * basis) * dtau)
        out.append(row)
    return out


def sample_deis(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, env: SamplerEnv) -> torch.Tensor:
    coeffs = deis_coefficients(sigmas)
    values = sigmas.tolist()
    ds: list[torch.Tensor] = []  # the last MAX_ORDER derivatives, oldest first
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        env.step(i, denoised, x)
        d = to_d(x, sigmas[i], denoised)
        ds = [*ds, d][-MAX_ORDER:]
        order = 1 if values[i + 1] <= 0 else min(MAX_ORDER, i + 1)
        if order == 1:
            x = x + (sigmas[i + 1] - sigmas[i]) * d
        else:
            for c, v in zip(coeffs[i], reversed(ds), strict=True):  # added one by one, as ComfyUI sums
                x = x + c.to(x.device) * v
    return x
