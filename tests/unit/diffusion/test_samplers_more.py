"""The 22 samplers ComfyUI 0.8.0 added beyond the classic ones: their steps against ComfyUI's formulas on a
stub guided denoiser (each worked out here in float64 on one latent value, with the documented noise: the
CPU generator seeded seed + 1, one [1, 1, 1, 1] draw per use), seeded reruns, every sampler on a tiny SD1.5
KSampler, and the CFG++ samplers on the cross-job batched path."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from scipy import integrate

from comfymesh.diffusion.models.cache import ModelCache
from comfymesh.diffusion.nodes import nodes
from comfymesh.diffusion.nodes.handles import checkpoint_of
from comfymesh.diffusion.sampling import batching
from comfymesh.diffusion.sampling.flow_sampling import FlowModelSampling
from comfymesh.diffusion.sampling.guidance import CondEntry, GuidedDenoiser
from comfymesh.diffusion.sampling.ksampler import prepare_sample, run_prepared
from comfymesh.diffusion.sampling.model_sampling import ModelSampling
from comfymesh.diffusion.sampling.samplers import CFG_PP_SAMPLERS, SAMPLER_NAMES, SAMPLERS, SamplerEnv
from comfymesh.stage.node import NodeContext

NEW = ("euler_cfg_pp", "euler_ancestral_cfg_pp", "heunpp2", "exp_heun_2_x0", "exp_heun_2_x0_sde", "dpm_fast",
       "dpm_adaptive", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_2m_cfg_pp", "ipndm", "ipndm_v", "deis",
       "res_multistep_cfg_pp", "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp", "gradient_estimation",
       "gradient_estimation_cfg_pp", "er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece")
CFG = 2.5
SEED = 11
X0 = 1.3


def cond(x: Any, s: float) -> Any:
    return 0.8 * x / (1 + s * s) + 0.1


def uncond(x: Any, s: float) -> Any:
    return 0.6 * x / (1 + s * s) - 0.05


def guided(x: Any, s: float) -> Any:
    u = uncond(x, s)
    return u + (cond(x, s) - u) * CFG


class Stub:
    """A guided denoiser as the CFG++ samplers see it: keeps each evaluation's unconditional prediction."""

    keep_uncond = True

    def __init__(self) -> None:
        self.last_uncond: torch.Tensor | None = None
        self.sigmas: list[float] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = float(sigma)
        self.sigmas.append(s)
        self.last_uncond = uncond(x, s)
        return guided(x, s)


def run(name: str, sigmas: list[float], flow: bool = False) -> tuple[float, Stub]:
    stub = Stub()
    ms = FlowModelSampling(3.0, 1.0) if flow else ModelSampling()
    env = SamplerEnv(seed=SEED, flow=flow, model_sampling=ms)
    out = SAMPLERS[name](stub, torch.full([1, 1, 1, 1], X0), torch.tensor(sigmas, dtype=torch.float32), env)
    return out.item(), stub


def f32(values: list[float]) -> list[float]:
    """The schedule as the sampler sees it (float32)."""
    return torch.tensor(values, dtype=torch.float32).tolist()


def draws() -> Callable[[], float]:
    gen = torch.Generator().manual_seed(SEED + 1)
    return lambda: torch.randn([1, 1, 1, 1], generator=gen).item()


def split(s_from: float, s_to: float, eta: float = 1.0) -> tuple[float, float]:
    """k-diffusion's ancestral step (σ_down, σ_up)."""
    if not eta:
        return s_to, 0.0
    up = min(s_to, eta * math.sqrt(s_to**2 * (s_from**2 - s_to**2) / s_from**2))
    return math.sqrt(s_to**2 - up**2), up


def lam(s: float, flow: bool = False) -> float:
    """Half-log-SNR log(α/σ)."""
    return math.log((1 - s) / s) if flow else -math.log(s)


def sig(lmb: float, flow: bool = False) -> float:
    return 1 / (1 + math.exp(lmb)) if flow else math.exp(-lmb)


def check(name: str, sigmas: list[float], expected: float, rel: float = 2e-5, flow: bool = False) -> Stub:
    out, stub = run(name, sigmas, flow)
    assert out == pytest.approx(expected, rel=rel, abs=1e-6), name
    return stub


# --- CFG++ ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flow", [False, True])
def test_euler_cfg_pp(flow: bool) -> None:
    s = f32([0.9, 0.6, 0.3] if flow else [2.0, 1.0, 0.5])
    x = X0
    for i in range(2):
        a_s, a_t = s[i] * math.exp(lam(s[i], flow)), s[i + 1] * math.exp(lam(s[i + 1], flow))  # 1, or 1 − σ
        d = (x - a_s * uncond(x, s[i])) / s[i]
        x = a_t * guided(x, s[i]) + s[i + 1] * d
    check("euler_cfg_pp", s, x, flow=flow)


@pytest.mark.parametrize("flow", [False, True])
def test_euler_ancestral_cfg_pp(flow: bool) -> None:
    s = f32([0.9, 0.6, 0.3] if flow else [2.0, 1.0, 0.5])
    z = draws()
    x = X0
    for i in range(2):
        a_s, a_t = (1 - s[i], 1 - s[i + 1]) if flow else (1.0, 1.0)
        d = (x - a_s * uncond(x, s[i])) / s[i]
        down, up = split(s[i] / a_s, s[i + 1] / a_t)
        x = a_t * guided(x, s[i]) + a_t * down * d + a_t * z() * up
    check("euler_ancestral_cfg_pp", s, x, flow=flow)


def test_euler_ancestral_cfg_pp_from_sigma_one_on_a_flow_model_takes_no_nan() -> None:
    # σ_0 = 1: α_0 = 0 and σ_0/α_0 = ∞; ComfyUI's Python min(σ_to, NaN) keeps σ_to (σ_down 0, σ_up σ_1/α_1)
    s = f32([1.0, 0.5])
    z = draws()
    expected = 0.5 * guided(X0, 1.0) + 0.5 * z() * (0.5 / 0.5)
    check("euler_ancestral_cfg_pp", s, expected, flow=True)


def test_dpmpp_2s_ancestral_cfg_pp() -> None:
    s = f32([2.0, 1.0, 0.5])
    z = draws()
    x = X0
    for i in range(2):
        den, unc = guided(x, s[i]), uncond(x, s[i])
        down, up = split(s[i], s[i + 1])
        t, t_next = -math.log(s[i]), -math.log(down)
        h = t_next - t
        mid = math.exp(-(t + h / 2))
        x_2 = mid / s[i] * (x + den - unc) - math.expm1(-h / 2) * den
        den_2, unc_2 = guided(x_2, mid), uncond(x_2, mid)
        # ComfyUI's second update reads the unconditional prediction of the midpoint evaluation
        x = down / s[i] * (x + den - unc_2) - math.expm1(-h) * den_2
        x += z() * up
    check("dpmpp_2s_ancestral_cfg_pp", s, x)


def test_dpmpp_2m_cfg_pp() -> None:
    s = f32([3.0, 1.5, 0.5, 0.0])
    x, old = X0, None
    for i in range(3):
        den, unc = guided(x, s[i]), uncond(x, s[i])
        if s[i + 1] == 0:
            x = den  # h = ∞: e^{−h} = 0
        else:
            h = math.log(s[i]) - math.log(s[i + 1])
            mix = -math.exp(-h) * unc
            if old is not None:
                r = (math.log(s[i - 1]) - math.log(s[i])) / h
                mix -= math.expm1(-h) / (2 * r) * (den - old)
            x = den + mix + math.exp(-h) * x
        old = unc
    check("dpmpp_2m_cfg_pp", s, x)


def res_reference(s: list[float], eta: float, cfg_pp: bool) -> float:
    """res_multistep (Zhang et al. 2023) as ComfyUI writes it, φ₁(z) = (e^z − 1)/z, φ₂(z) = (φ₁(z) − 1)/z."""
    z = draws()
    x, old, old_down = X0, None, None
    for i in range(len(s) - 1):
        den, unc = guided(x, s[i]), uncond(x, s[i])
        use = unc if cfg_pp else den
        down, up = split(s[i], s[i + 1], eta)
        if down == 0 or old is None or old_down is None:
            x = den + (x - unc) / s[i] * down if cfg_pp else x + (x - den) / s[i] * (down - s[i])
        else:
            h = math.log(s[i]) - math.log(down)
            c2 = (math.log(old_down) - math.log(s[i - 1])) / h
            phi1 = math.expm1(-h) / -h
            phi2 = (phi1 - 1) / -h
            if cfg_pp:
                x = x + den - unc
            x = math.exp(-h) * x + h * ((phi1 - phi2 / c2) * use + phi2 / c2 * old)
        if eta and s[i + 1] > 0:
            x += z() * up
        old, old_down = use, down
    return x


@pytest.mark.parametrize(("name", "eta", "cfg_pp"), [("res_multistep", 0.0, False), ("res_multistep_cfg_pp", 0.0, True),
                                                     ("res_multistep_ancestral", 1.0, False),
                                                     ("res_multistep_ancestral_cfg_pp", 1.0, True)])
def test_res_multistep_family(name: str, eta: float, cfg_pp: bool) -> None:
    s = f32([3.0, 1.5, 0.7, 0.3])
    check(name, s, res_reference(s, eta, cfg_pp))


@pytest.mark.parametrize("cfg_pp", [False, True])
def test_gradient_estimation(cfg_pp: bool) -> None:
    s = f32([3.0, 1.5, 0.5, 0.0])
    x, old_d = X0, 0.0
    for i in range(3):
        den = guided(x, s[i])
        d = (x - (uncond(x, s[i]) if cfg_pp else den)) / s[i]
        dt = s[i + 1] - s[i]
        if s[i + 1] == 0:
            x = den
        else:
            x = den + d * s[i + 1] if cfg_pp else x + d * dt
            if i >= 1:
                x += (2.0 - 1) * (d - old_d) * dt  # γ = 2
        old_d = d
    check("gradient_estimation_cfg_pp" if cfg_pp else "gradient_estimation", s, x)


# --- deterministic single- and multistep ----------------------------------------------------------------


def test_heunpp2() -> None:
    s = f32([3.0, 2.0, 1.0, 0.5])

    def d(x: float, sigma: float) -> float:
        return (x - guided(x, sigma)) / sigma

    x = X0
    # step 0: Heun++ over σ_1 and σ_2 (weights σ/(3σ_0)); step 1: Heun weighted σ_2/(2σ_0); step 2: Euler
    d1 = d(x, s[0])
    x2 = x + d1 * (s[1] - s[0])
    d2 = d(x2, s[1])
    x3 = x2 + d2 * (s[2] - s[1])
    d3 = d(x3, s[2])
    w2, w3 = s[1] / (3 * s[0]), s[2] / (3 * s[0])
    x = x + ((1 - w2 - w3) * d1 + w2 * d2 + w3 * d3) * (s[1] - s[0])
    d1 = d(x, s[1])
    d2 = d(x + d1 * (s[2] - s[1]), s[2])
    w2 = s[2] / (2 * s[0])
    x = x + (d1 * (1 - w2) + d2 * w2) * (s[2] - s[1])
    x = x + d(x, s[2]) * (s[3] - s[2])
    stub = check("heunpp2", s, x)
    assert len(stub.sigmas) == 3 + 2 + 1


def ipndm_reference(s: list[float], variable: bool) -> float:
    x, ds = X0, list[float]()
    for i in range(len(s) - 1):
        den = guided(x, s[i])
        ds.insert(0, (x - den) / s[i])
        order = min(4, i + 1)
        if s[i + 1] == 0:
            x = den
            continue
        h = [s[i + 1] - s[i]] + [s[i - k] - s[i - k - 1] for k in range(order - 1)]  # h_n, h_{n−1}, …
        c: list[float]
        if not variable or order == 1:
            c = {1: [1.0], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12],
                 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}[order]
        elif order == 2:
            c = [1 + h[0] / (2 * h[1]), -h[0] / (2 * h[1])]
        else:
            # the variable-step Adams–Bashforth weights of diff-solvers' iPNDM (their t1/t2 terms)
            t1 = (1 - h[0] / (3 * (h[0] + h[1])) * (h[0] * (h[0] + h[1])) / (h[1] * (h[1] + h[2]))) / 2
            base = [(2 + h[0] / h[1]) / 2 + t1, -(h[0] / h[1]) / 2 - (1 + h[1] / h[2]) * t1, t1 * h[1] / h[2]]
            if order == 3:
                c = base
            else:
                q = h[1] * (h[1] + h[2]) / (h[2] * (h[2] + h[3]))
                t2 = ((1 - h[0] / (3 * (h[0] + h[1]))) / 2 + (1 - h[0] / (2 * (h[0] + h[1]))) * h[0]
                      / (6 * (h[0] + h[1] + h[2]))) * (h[0] * (h[0] + h[1]) * (h[0] + h[1] + h[2])) \
                    / (h[1] * (h[1] + h[2]) * (h[1] + h[2] + h[3]))
                c = [base[0] + t2, base[1] - (1 + h[1] / h[2] + q) * t2, base[2] + (h[1] / h[2] + q * (1 + h[2] / h[3])) * t2,
                     -t2 * q * h[1] / h[2]]
        x = x + h[0] * sum(ci * di for ci, di in zip(c, ds, strict=False))
    return x


@pytest.mark.parametrize("variable", [False, True])
def test_ipndm(variable: bool) -> None:
    s = f32([4.0, 3.0, 2.2, 1.5, 0.9, 0.5, 0.0])
    check("ipndm_v" if variable else "ipndm", s, ipndm_reference(s, variable))


def test_ipndm_v_on_even_steps_is_ipndm_up_to_order_3() -> None:
    # (diff-solvers' 4th-order variable weights are not Adams–Bashforth's on even steps: 57/24, not 55/24)
    s = f32([4.0, 3.5, 3.0, 2.5])
    assert run("ipndm_v", s)[0] == pytest.approx(run("ipndm", s)[0], rel=1e-5)


def test_deis() -> None:
    s = f32([4.0, 2.0, 1.0, 0.5, 0.0])
    # the VP SDE fitted to σ ∈ [0.002, 80] at ε = 1e-3, and t(σ)
    b_d = 2 * (math.log(0.002**2 + 1) / 1e-3 - math.log(80.0**2 + 1)) / (1e-3 - 1)
    b_0 = math.log(80.0**2 + 1) - 0.5 * b_d
    b_1 = b_d + b_0
    t = [(math.sqrt(b_0**2 + 2 * b_d * math.log(v**2 + 1)) - b_0) / b_d for v in s]

    def integrand(tau: float) -> float:
        alpha = math.exp(-0.5 * tau**2 * (b_1 - b_0) - tau * b_0)
        return 0.5 * (tau * (b_1 - b_0) + b_0) / math.sqrt(alpha * (1 - alpha))

    def coeff(i: int, j: int, order: int) -> float:
        nodes_ = [t[i - k] for k in range(order)]

        def basis(tau: float) -> float:
            return math.prod((tau - nodes_[k]) / (nodes_[j] - nodes_[k]) for k in range(order) if k != j)

        return integrate.quad(lambda tau: integrand(tau) * basis(tau), t[i], t[i + 1])[0]

    x, ds = X0, list[float]()
    for i in range(len(s) - 1):
        den = guided(x, s[i])
        ds.insert(0, (x - den) / s[i])
        order = 1 if s[i + 1] == 0 else min(3, i + 1)
        if order == 1:
            x = x + (s[i + 1] - s[i]) * ds[0]
        else:
            x = x + sum(coeff(i, j, order) * ds[j] for j in range(order))
    # ComfyUI integrates by a 10 000-point Riemann sum: agreement to its accuracy
    check("deis", s, x, rel=5e-4)


# --- DPM-Solver fast / adaptive -------------------------------------------------------------------------


def dpm_steps(x: float, t: float, t_next: float, order: int, r1: float | None = None) -> tuple[float, int]:
    """One DPM-Solver step in ε form (Lu et al. 2022), t = −ln σ; returns (x, evaluations)."""

    def eps(v: float, tt: float) -> float:
        return (v - guided(v, math.exp(-tt))) / math.exp(-tt)

    h = t_next - t
    e = eps(x, t)
    if order == 1:
        return x - math.exp(-t_next) * math.expm1(h) * e, 1
    if order == 2:
        r = 0.5 if r1 is None else r1
        s1 = t + r * h
        e1 = eps(x - math.exp(-s1) * math.expm1(r * h) * e, s1)
        return x - math.exp(-t_next) * math.expm1(h) * e - math.exp(-t_next) / (2 * r) * math.expm1(h) * (e1 - e), 2
    s1, s2 = t + h / 3, t + 2 * h / 3
    e1 = eps(x - math.exp(-s1) * math.expm1(h / 3) * e, s1)
    u2 = x - math.exp(-s2) * math.expm1(2 * h / 3) * e \
        - math.exp(-s2) * 2 * (math.expm1(2 * h / 3) / (2 * h / 3) - 1) * (e1 - e)
    e2 = eps(u2, s2)
    return x - math.exp(-t_next) * math.expm1(h) * e - math.exp(-t_next) * 1.5 * (math.expm1(h) / h - 1) * (e2 - e), 3


@pytest.mark.parametrize(("sigmas", "orders"), [([2.0, 1.0, 0.5], [2]), ([3.0, 2.0, 1.0, 0.0], [2, 1]),
                                                ([4.0, 3.0, 2.0, 1.5, 0.7], [3, 1]),
                                                ([5.0, 4.0, 3.0, 2.0, 1.5, 1.0, 0.7], [3, 2, 1])])
def test_dpm_fast(sigmas: list[float], orders: list[int]) -> None:
    # n evaluations over ⌊n/3⌋ + 1 steps evenly spaced in t, from σ_0 to the last non-zero σ (x returned there)
    s = f32(sigmas)
    s_min = s[-1] if s[-1] else s[-2]
    n = len(s) - 1
    ts = torch.linspace(-math.log(s[0]), -math.log(s_min), n // 3 + 2).tolist()
    x, evals = X0, 0
    for i, order in enumerate(orders):
        x, k = dpm_steps(x, ts[i], ts[i + 1], order)
        evals += k
    stub = check("dpm_fast", s, x)
    assert len(stub.sigmas) == evals == n


def test_dpm_adaptive() -> None:
    s = f32([2.0, 1.0, 0.5])
    t, t_end = -math.log(s[0]), -math.log(s[-1])
    x, x_prev, h = X0, X0, 0.05
    accepted = 0
    while t < t_end - 1e-5:
        t_next = min(t_end, t + h)
        x_low, _ = dpm_steps(x, t, t_next, 2, r1=1 / 3)
        x_high, _ = dpm_steps(x, t, t_next, 3)
        delta = max(0.0078, 0.05 * max(abs(x_low), abs(x_prev)))
        factor = 1 + math.atan((1 / (abs(x_low - x_high) / delta + 1e-8)) ** (1 / 3) - 1)  # PID, integral term
        h *= factor
        if factor >= 0.81:
            x_prev, x, t = x_low, x_high, t_next
            accepted += 1
    assert accepted > 3
    check("dpm_adaptive", s, x, rel=1e-4)


# --- SEEDS, exponential Heun, ER-SDE --------------------------------------------------------------------


def seeds_reference(s: list[float], rs: list[float], eta: float, flow: bool = False, phi: str = "phi_2") -> float:
    """SEEDS-2 (rs = [r]) / SEEDS-3 (rs = [r₁, r₂]) in data prediction, λ = log(α/σ), with ComfyUI's
    combination weights (h·φ₁(z) = e^z − 1, h·φ₂(z) = (e^z − 1 − z)/z)."""
    z = draws()

    def p1(v: float) -> float:
        return math.expm1(v)

    def p2(v: float) -> float:
        return (math.expm1(v) - v) / v

    inject = eta > 0
    x = X0
    if flow and s[0] >= 1:
        s = [FlowModelSampling(3.0, 1.0).percent_to_sigma(1e-4), *s[1:]]
    for i in range(len(s) - 1):
        den = guided(x, s[i])
        if s[i + 1] == 0:
            x = den
            continue
        ls, lt = lam(s[i], flow), lam(s[i + 1], flow)
        h = lt - ls
        he = h * (eta + 1)
        r1 = rs[0]
        l1 = ls + r1 * h
        s1 = sig(l1, flow)
        a1, at = s1 * math.exp(l1), s[i + 1] * math.exp(lt)
        x2 = s1 / s[i] * math.exp(-r1 * h * eta) * x - a1 * p1(-r1 * he) * den
        noise = 0.0
        if inject:
            noise = math.sqrt(-math.expm1(-2 * r1 * h * eta)) * z()
            x2 += noise * s1
        d2 = guided(x2, s1)
        last_r, last_d = r1, d2
        if len(rs) == 2:
            r2 = rs[1]
            l2 = ls + r2 * h
            s2 = sig(l2, flow)
            a2 = s2 * math.exp(l2)
            w2 = r2 / r1 * p2(-r2 * he)
            x3 = s2 / s[i] * math.exp(-r2 * h * eta) * x - a2 * ((p1(-r2 * he) - w2) * den + w2 * d2)
            if inject:
                seg = (r1 - r2) * h * eta
                noise = noise * math.exp(seg) + math.sqrt(-math.expm1(2 * seg)) * z()
                x3 += noise * s2
            last_r, last_d = r2, guided(x3, s2)
        if phi == "phi_1":
            mixed = den + (last_d - den) / (2 * last_r)
            x = s[i + 1] / s[i] * math.exp(-h * eta) * x - at * p1(-he) * mixed
        else:
            b2 = p2(-he) / last_r
            x = s[i + 1] / s[i] * math.exp(-h * eta) * x - at * ((p1(-he) - b2) * den + b2 * last_d)
        if inject:
            seg = (last_r - 1) * h * eta
            noise = noise * math.exp(seg) + math.sqrt(-math.expm1(2 * seg)) * z()
            x += noise * s[i + 1]
    return x


@pytest.mark.parametrize("flow", [False, True])
def test_exp_heun_2_x0(flow: bool) -> None:
    s = f32([1.0, 0.6, 0.3, 0.0] if flow else [3.0, 1.5, 0.5, 0.0])
    stub = check("exp_heun_2_x0", s, seeds_reference(s, [1.0], 0.0, flow), flow=flow)
    if flow:  # the first σ of 1 moves to σ at 0.01 % of the flow schedule
        assert stub.sigmas[0] == pytest.approx(FlowModelSampling(3.0, 1.0).percent_to_sigma(1e-4), rel=1e-6)


@pytest.mark.parametrize("flow", [False, True])
def test_exp_heun_2_x0_sde(flow: bool) -> None:
    s = f32([0.9, 0.6, 0.3] if flow else [2.0, 1.0, 0.5])
    check("exp_heun_2_x0_sde", s, seeds_reference(s, [1.0], 1.0, flow), flow=flow)


def test_seeds_2() -> None:
    s = f32([2.0, 1.0, 0.5])
    check("seeds_2", s, seeds_reference(s, [0.5], 1.0, phi="phi_1"))


@pytest.mark.parametrize("flow", [False, True])
def test_seeds_3(flow: bool) -> None:
    s = f32([0.9, 0.6, 0.3] if flow else [2.0, 1.0, 0.5])
    check("seeds_3", s, seeds_reference(s, [1 / 3, 2 / 3], 1.0, flow), flow=flow)


@pytest.mark.parametrize("flow", [False, True])
def test_er_sde(flow: bool) -> None:
    s = f32([1.0, 0.7, 0.4, 0.2, 0.0] if flow else [3.0, 1.5, 0.7, 0.3, 0.0])
    z = draws()
    if flow:
        s = [FlowModelSampling(3.0, 1.0).percent_to_sigma(1e-4), *s[1:]]

    def f(v: float) -> float:  # the noise scaler
        return v * (math.exp(v**0.3) + 10.0)

    er = [math.exp(-lam(v, flow)) if v > 0 else 0.0 for v in s]  # σ/α
    x, old, old_d = X0, 0.0, 0.0
    for i in range(len(s) - 1):
        den = guided(x, s[i])
        if s[i + 1] == 0:
            x = den
            break
        ls, lt = er[i], er[i + 1]
        a_t = s[i + 1] / lt
        r = f(lt) / f(ls)
        x = a_t / (s[i] / ls) * r * x + a_t * (1 - r) * den
        if i >= 1:
            # ComfyUI's 200-point left Riemann sums from λ_{i+1} towards λ_i
            dt = lt - ls
            step = -dt / 200
            pts = [lt + k * step for k in range(200)]
            s1 = sum(1 / f(p) for p in pts) * step
            dd = (den - old) / (ls - er[i - 1])
            x += a_t * (dt + s1 * f(lt)) * dd
            if i >= 2:
                s2 = sum((p - ls) / f(p) for p in pts) * step
                du = (dd - old_d) / ((ls - er[i - 2]) / 2)
                x += a_t * (dt**2 / 2 + s2 * f(lt)) * du
            old_d = dd
        x += a_t * z() * math.sqrt(max(lt**2 - ls**2 * r**2, 0.0))
        old = den
    check("er_sde", f32([1.0, 0.7, 0.4, 0.2, 0.0]) if flow else s, x, flow=flow, rel=5e-5)


# --- SA-Solver ------------------------------------------------------------------------------------------


def adams_b(nodes_: list[float], l_s: float, l_t: float, tau: float, sigma_t: float) -> list[float]:
    """b_k = α_t·(1 + τ²)·∫_{λ_s}^{λ_t} e^{(1+τ²)(λ−λ_t)}·L_k(λ) dλ (SA-Solver, eqs. 15/18)."""
    mul = 1 + tau**2

    def basis(k: int, v: float) -> float:
        return math.prod((v - nodes_[j]) / (nodes_[k] - nodes_[j]) for j in range(len(nodes_)) if j != k)

    alpha_t = sigma_t * math.exp(l_t)
    return [alpha_t * mul * integrate.quad(lambda v, k=k: math.exp(mul * (v - l_t)) * basis(k, v), l_s, l_t)[0]
            for k in range(len(nodes_))]


@pytest.mark.parametrize("pece", [False, True])
def test_sa_solver(pece: bool) -> None:
    ms = ModelSampling()
    start, end = ms.percent_to_sigma(0.2), ms.percent_to_sigma(0.8)
    s = f32([2.0, 1.5, 0.5, 0.3])  # last σ non-zero: no lowering of orders at the end
    taus = [1.0 if start >= v >= end else 0.0 for v in s]
    assert taus[1:] == [1.0, 0.0, 0.0]
    lams = [lam(v) for v in s]
    z = draws()
    x_pred, x, preds, noise, h, tau = X0, X0, [], 0.0, 0.0, 0.0
    for i in range(len(s) - 1):
        den = guided(x_pred, s[i])
        preds.append(den)
        if i == 0:
            x = x_pred
        else:  # corrector of order min(4, #predictions), with the noise of the predictor step
            k = min(4, len(preds))
            b = adams_b(lams[i - k + 1:i + 1], lams[i - 1], lams[i], tau, s[i])
            x = s[i] / s[i - 1] * math.exp(-(tau**2) * h) * x + sum(bi * p for bi, p in zip(b, preds[-k:], strict=True))
            x += noise if tau > 0 else 0.0
            if pece:
                preds[-1] = den = guided(x, s[i])
        tau = taus[i + 1]
        k = min(3, len(preds))
        b = adams_b(lams[i - k + 1:i + 1], lams[i], lams[i + 1], tau, s[i + 1])
        h = lams[i + 1] - lams[i]
        x_pred = s[i + 1] / s[i] * math.exp(-(tau**2) * h) * x + sum(bi * p for bi, p in zip(b, preds[-k:], strict=True))
        noise = z() * s[i + 1] * math.sqrt(-math.expm1(-2 * tau**2 * h)) if tau > 0 else 0.0
        x_pred += noise
    stub = check("sa_solver_pece" if pece else "sa_solver", s, x_pred, rel=5e-5)
    assert len(stub.sigmas) == (3 + 2 if pece else 3)


# --- seeds, registry, wiring ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NEW)
def test_seeded_reruns_are_identical_and_seeds_matter(name: str) -> None:
    sigmas = torch.tensor([3.0, 1.5, 0.7, 0.3, 0.0])
    x = torch.randn([2, 4, 4, 4], generator=torch.Generator().manual_seed(0)) * 3

    def go(seed: int) -> torch.Tensor:
        return SAMPLERS[name](Stub(), x.clone(), sigmas, SamplerEnv(seed=seed))

    a = go(5)
    assert torch.equal(a, go(5)) and bool(a.isfinite().all())
    stochastic = {"euler_ancestral_cfg_pp", "exp_heun_2_x0_sde", "dpmpp_2s_ancestral_cfg_pp", "res_multistep_ancestral",
                  "res_multistep_ancestral_cfg_pp", "er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece"}
    assert torch.equal(a, go(6)) != (name in stochastic)


def test_all_44_are_implemented_in_comfyui_order() -> None:
    assert list(SAMPLERS) == list(SAMPLER_NAMES) and len(SAMPLERS) == 44
    assert set(NEW) <= set(SAMPLERS)
    assert {n for n in SAMPLER_NAMES if "cfg_pp" in n} == CFG_PP_SAMPLERS


def test_a_cfg_pp_sampler_needs_the_unconditional_prediction() -> None:
    with pytest.raises(Exception, match="unconditional"):
        SAMPLERS["euler_cfg_pp"](lambda x, s: x, torch.ones([1, 1, 1, 1]), torch.tensor([1.0, 0.0]), SamplerEnv(seed=0))


def test_guided_denoiser_keeps_the_unconditional_prediction_even_at_cfg_1() -> None:
    calls: list[int] = []

    def unet(x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        calls.append(int(x.shape[0]))
        return ctx[:, :1, :1].reshape(-1, 1, 1, 1) * torch.ones_like(x)  # ε = the entry's first context value

    pos, neg = CondEntry(torch.full([1, 1, 4], 0.5)), CondEntry(torch.full([1, 1, 4], -0.25))
    g = GuidedDenoiser(unet, ModelSampling(), "eps", [pos], [neg], 1.0, torch.float32)
    x, sigma = torch.ones([1, 1, 2, 2]), torch.tensor(2.0)
    g(x, sigma)
    assert calls == [1] and g.last_uncond is None  # cfg 1: the negative is skipped
    g.keep_uncond = True
    out = g(x, sigma)
    assert calls[-1] == 2
    assert g.last_uncond is not None and torch.allclose(g.last_uncond, x + 0.25 * 2.0)  # x0 = x − σ·ε
    assert torch.allclose(out, x - 0.5 * 2.0)


# --- on a tiny SD1.5 model ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd15(tiny_home: Path, model_cache: ModelCache) -> dict[str, Any]:
    """The tiny SD1.5 model and its two prompts, encoded once for the module."""
    ctx = NodeContext(job_id="job", node_id="7", class_type="test", home=tiny_home)
    model, clip, _ = nodes.impls["CheckpointLoaderSimple"](ctx, ckpt_name="sd15.safetensors")
    (pos,) = nodes.impls["CLIPTextEncode"](ctx, text="a lighthouse", clip=clip)
    (neg,) = nodes.impls["CLIPTextEncode"](ctx, text="blurry", clip=clip)
    return {"ctx": ctx, "model": model, "positive": pos, "negative": neg}


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_every_sampler_runs_a_tiny_sd15_ksampler(sd15: dict[str, Any], name: str) -> None:
    # on the random tiny model dpm_adaptive's step-size control shrinks h to ~1e-4 (thousands of evaluations
    # per unit of t, as ComfyUI's would): a short σ range keeps it to seconds
    denoise = 0.02 if name == "dpm_adaptive" else 1.0
    (out,) = nodes.impls["KSampler"](sd15["ctx"], seed=3, steps=2, cfg=4.0, sampler_name=name, scheduler="karras",
                                     latent_image={"samples": torch.zeros(1, 4, 8, 8)}, denoise=denoise,
                                     model=sd15["model"], positive=sd15["positive"], negative=sd15["negative"])
    samples = torch.as_tensor(out["samples"])
    assert samples.shape == (1, 4, 8, 8) and bool(samples.isfinite().all()) and bool(samples.any())


@pytest.mark.parametrize("name", sorted(CFG_PP_SAMPLERS))
def test_cfg_pp_samplers_batch_across_jobs_as_they_run_alone(sd15: dict[str, Any], model_cache: ModelCache,
                                                            name: str) -> None:
    inputs = sd15
    sm = model_cache.sampling_model(checkpoint_of(sd15["ctx"], inputs["model"]), ())
    preps = [prepare_sample(sm, seed=seed, steps=2, cfg=cfg, sampler_name=name, scheduler="karras",
                            positive=inputs["positive"], negative=inputs["negative"],
                            latent={"samples": torch.zeros(1, 4, 8, 8)})
             for seed, cfg in ((1, 5.0), (2, 1.0))]  # cfg 1: the negative still runs for CFG++
    members = [batching._Member(p, f"job{i}", None, None) for i, p in enumerate(preps)]  # type: ignore[arg-type]
    with torch.no_grad():
        batching.run_batch(members)
        for m, p in zip(members, preps, strict=True):
            alone = run_prepared(p)["samples"]  # type: ignore[arg-type]
            together = m.future.result()["samples"]
            torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5 * float(alone.abs().max()))
