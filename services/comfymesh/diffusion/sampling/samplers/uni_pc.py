"""uni_pc / uni_pc_bh2: UniPC multistep predictor-corrector (Zhao et al. 2023), data-prediction form.

Works in variance-preserving coordinates of the σ schedule: α = 1/√(1+σ²), σ_vp = σ·α, λ = −ln σ.
The schedule's final 0 becomes 0.001; B(h) = h (bh1, "uni_pc") or e^h − 1 (bh2).
"""

from __future__ import annotations

import torch

from comfymesh.diffusion.sampling.samplers.base import Denoiser, Sampler, SamplerEnv

FINAL_SIGMA = 0.001


def _log_alpha(s: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.log(1 / (s * s + 1))


def _alpha(s: torch.Tensor) -> torch.Tensor:
    return torch.exp(_log_alpha(s))


def _std(s: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(1.0 - torch.exp(2.0 * _log_alpha(s)))


def _lambda(s: torch.Tensor) -> torch.Tensor:
    la = _log_alpha(s)
    return la - 0.5 * torch.log(1.0 - torch.exp(2.0 * la))


def _data_prediction(model: Denoiser, x_vp: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """x0 from the σ-space denoiser used as an ε predictor, then mapped back to VP data prediction."""
    x_ve = x_vp / _alpha(s)
    eps = (x_ve - model(x_ve, s)) / s
    return (x_vp - _std(s) * eps) / _alpha(s)


def _update(model: Denoiser, x: torch.Tensor, prev_models: list[torch.Tensor], prev_t: list[torch.Tensor],
            t: torch.Tensor, order: int, use_corrector: bool, variant: str,
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One UniP step to t (and UniC correction when asked); returns (x_t, model output at x_t or None)."""
    t0, m0 = prev_t[-1], prev_models[-1]
    lam_prev0, lam_t = _lambda(t0), _lambda(t)
    sigma_prev0, sigma_t, alpha_t = _std(t0), _std(t), _alpha(t)
    h = lam_t - lam_prev0
    rks: list[torch.Tensor] = []
    d1s: list[torch.Tensor] = []
    for i in range(1, order):
        rk = (_lambda(prev_t[-(i + 1)]) - lam_prev0) / h
        rks.append(rk)
        d1s.append((prev_models[-(i + 1)] - m0) / rk)
    rks.append(torch.ones_like(h))
    r = torch.stack(rks)
    hh = -h  # data prediction
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    rows, b = [], []
    factorial = 1
    for i in range(1, order + 1):
        rows.append(torch.pow(r, i - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    mat, vec = torch.stack(rows), torch.stack(b)

    x_t_ = sigma_t / sigma_prev0 * x - alpha_t * h_phi_1 * m0
    if d1s:
        rhos_p = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(mat[:-1, :-1], vec[:-1])
        pred_res = sum(rhos_p[k] * d1s[k] for k in range(len(d1s)))
        x_t = x_t_ - alpha_t * b_h * pred_res
    else:
        x_t = x_t_
    if not use_corrector:
        return x_t, None
    model_t = _data_prediction(model, x_t, t)
    rhos_c = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(mat, vec)
    corr_res = sum(rhos_c[k] * d1s[k] for k in range(len(d1s))) if d1s else torch.zeros_like(x_t)
    x_t = x_t_ - alpha_t * b_h * (corr_res + rhos_c[-1] * (model_t - m0))
    return x_t, model_t


def make_uni_pc(variant: str) -> Sampler:
    def sample(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, env: SamplerEnv) -> torch.Tensor:
        ts = sigmas.clone()
        if float(ts[-1]) == 0.0:
            ts[-1] = FINAL_SIGMA
        steps = len(ts) - 1
        order = max(1, min(3, len(ts) - 2))
        x = x / torch.sqrt(1.0 + ts[0] ** 2)
        prev_t = [ts[0]]
        prev_models = [_data_prediction(model, x, ts[0])]
        env.step(0, prev_models[-1], x)
        for step in range(1, steps + 1):
            step_order = min(order, step, steps + 1 - step)  # warm-up, then lower order at the end
            use_corrector = step != steps
            x, model_x = _update(model, x, prev_models, prev_t, ts[step], step_order, use_corrector, variant)
            prev_t.append(ts[step])
            if step < steps:
                if model_x is None:
                    model_x = _data_prediction(model, x, ts[step])
                prev_models.append(model_x)
                env.step(step, model_x, x)
            del prev_t[:-order], prev_models[:-order]  # keep the last `order` points
        return x / _alpha(ts[-1])

    return sample

