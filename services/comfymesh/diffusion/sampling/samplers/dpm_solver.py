"""dpm_fast and dpm_adaptive: DPM-Solver (Lu et al. 2022, arXiv 2206.00927) in ε form and t = −ln σ, as
ComfyUI runs them (η = 0).

Both integrate from σ_0 to the schedule's smallest non-zero σ (the last σ, or the one before a final 0)
and return x there, as ComfyUI does. The model is evaluated at σ = e^{−t} of the solver's own times.
- dpm_fast: n = len(sigmas) − 1 evaluations spread over ⌊n/3⌋ + 1 steps evenly spaced in t, third order
  but for the last one or two (orders 3…3,2,1 when 3 | n, else 3…3,n mod 3);
- dpm_adaptive: orders 2 and 3 side by side from h = 0.05, step size set by ComfyUI's PID controller
  (integral term only) on the scaled difference of the two, accepted when the factor is ≥ 0.81.
"""

from __future__ import annotations

import math

import torch

from comfymesh.diffusion.sampling.samplers.base import Denoiser, SamplerEnv, sigma_of, t_of


class _Solver:
    """DPM-Solver steps with their ε evaluations cached per step (the 2nd-order low estimate of the
    adaptive solver shares its r₁ = ⅓ point with the 3rd-order one)."""

    def __init__(self, model: Denoiser) -> None:
        self.model = model
        self.cache: dict[str, torch.Tensor] = {}

    def eps(self, key: str, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if key not in self.cache:
            self.cache[key] = (x - self.model(x, sigma_of(t))) / sigma_of(t)
        return self.cache[key]

    def step1(self, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        return x - sigma_of(t_next) * (t_next - t).expm1() * self.eps("eps", x, t)

    def step2(self, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, r1: float = 1 / 2) -> torch.Tensor:
        h = t_next - t
        eps = self.eps("eps", x, t)
        s1 = t + r1 * h
        u1 = x - sigma_of(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps("eps_r1", u1, s1)
        return x - sigma_of(t_next) * h.expm1() * eps - sigma_of(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)

    def step3(self, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        r1, r2 = 1 / 3, 2 / 3
        h = t_next - t
        eps = self.eps("eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - sigma_of(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps("eps_r1", u1, s1)
        u2 = x - sigma_of(s2) * (r2 * h).expm1() * eps \
            - sigma_of(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps)
        eps_r2 = self.eps("eps_r2", u2, s2)
        return x - sigma_of(t_next) * h.expm1() * eps - sigma_of(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)


def _ends(sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(t at σ_0, t at the smallest non-zero σ)."""
    sigma_min = sigmas[-1] if float(sigmas[-1]) != 0 else sigmas[-2]
    if float(sigma_min) <= 0 or float(sigmas[0]) <= 0:
        raise ValueError("dpm_fast/dpm_adaptive need non-zero first and last sigmas")
    return t_of(sigmas[0].clone()), t_of(sigma_min.clone())


def sample_dpm_fast(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, env: SamplerEnv) -> torch.Tensor:
    if len(sigmas) <= 1:
        return x
    nfe = len(sigmas) - 1
    t_start, t_end = _ends(sigmas)
    m = nfe // 3 + 1
    ts = torch.linspace(float(t_start), float(t_end), m + 1)
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    for i, order in enumerate(orders):
        solver = _Solver(model)
        t, t_next = ts[i], ts[i + 1]
        eps = solver.eps("eps", x, t)
        env.step(i, x - sigma_of(t) * eps, x)
        if order == 1:
            x = solver.step1(x, t, t_next)
        elif order == 2:
            x = solver.step2(x, t, t_next)
        else:
            x = solver.step3(x, t, t_next)
    return x


class _PID:
    """ComfyUI's step-size controller with p = d = 0, i = 1 (factor = (1/error)^(1/order), softened by
    1 + atan(f − 1))."""

    def __init__(self, h: float, order: float, accept_safety: float = 0.81, eps: float = 1e-8) -> None:
        self.h = h
        self.b1 = 1.0 / order
        self.accept_safety = accept_safety
        self.eps = eps

    def propose(self, error: float) -> bool:
        factor = (1 / (error + self.eps)) ** self.b1
        factor = 1 + math.atan(factor - 1)
        self.h *= factor
        return factor >= self.accept_safety


def sample_dpm_adaptive(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, env: SamplerEnv,
                        rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05) -> torch.Tensor:
    if len(sigmas) <= 1:
        return x
    t_start, t_end = _ends(sigmas)
    forward = bool(t_end > t_start)
    pid = _PID(abs(h_init) * (1 if forward else -1), 3)
    atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
    s = t_start
    x_prev = x
    steps = 0
    while (s < t_end - 1e-5) if forward else (s > t_end + 1e-5):
        solver = _Solver(model)
        t = torch.minimum(t_end, s + pid.h) if forward else torch.maximum(t_end, s + pid.h)
        eps = solver.eps("eps", x, s)
        denoised = x - sigma_of(s) * eps
        x_low = solver.step2(x, s, t, r1=1 / 3)
        x_high = solver.step3(x, s, t)
        delta = torch.maximum(atol_t.to(x.device), rtol_t.to(x.device) * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if pid.propose(float(error)):
            x_prev = x_low
            x = x_high
            s = t
        steps += 1
        env.step(steps - 1, denoised, x)  # every attempt, accepted or not, as ComfyUI's callback
    return x
