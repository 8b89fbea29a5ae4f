"""Sampler updates: hand-computed single steps, and ComfyUI-measured vectors (§4.6 harness)."""

from __future__ import annotations

import math

import pytest
import torch

from comfymesh.diffusion.sampling.model_sampling import ModelSampling
from comfymesh.diffusion.sampling.samplers import IMPLEMENTED_SAMPLERS, SAMPLER_NAMES, SAMPLERS, SamplerEnv
from comfymesh.diffusion.sampling.schedulers import sampler_sigmas

# name, scheduler, mean, std, first three values (ComfyUI's own functions, CPU)
MEASURED = [
    ("euler", "karras", 0.301899, 0.403038, (1.06165, 0.88244, 0.64335)),
    ("euler_ancestral", "karras", 0.286716, 0.318035, (0.57982, 0.79427, 0.60623)),
    ("heun", "karras", 0.385919, 0.354273, (1.05374, 0.89622, 0.68606)),
    ("dpm_2", "karras", 0.322220, 0.499547, (1.26389, 1.04178, 0.74543)),
    ("dpm_2_ancestral", "karras", 0.388463, 0.348334, (0.76069, 0.97785, 0.76712)),
    ("lms", "karras", 0.321099, 0.426793, (1.12563, 0.93586, 0.68268)),
    ("dpmpp_2m", "karras", 0.348946, 0.467154, (1.22955, 1.02185, 0.74472)),
    ("dpmpp_2m_sde", "karras", 0.380702, 0.435571, (0.12466, 0.32817, 0.36414)),
    ("dpmpp_sde", "karras", 0.364183, 0.325948, (0.1512, 0.32222, 0.28677)),
    ("dpmpp_3m_sde", "karras", 0.426129, 0.462810, (0.2878, 0.40855, 0.4896)),
    ("dpmpp_2s_ancestral", "karras", 0.358859, 0.280288, (0.63779, 0.79989, 0.65488)),
    ("ddim", "normal", 0.275855, 0.463653, (1.14986, 0.94371, 0.66866)),
    ("uni_pc", "simple", 0.211902, 0.596692, (1.3367, 1.07139, 0.71742)),
    ("uni_pc_bh2", "simple", 0.211333, 0.594532, (1.33206, 1.06771, 0.71502)),
    ("lcm", "sgm_uniform", 0.221149, 0.440138, (0.56673, 0.81892, 0.37697)),
    ("ddpm", "normal", 0.248045, 0.426097, (0.58983, 0.86809, 0.65272)),
]


def toy_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return 0.8 * x / (1 + sigma**2) + 0.1


@pytest.fixture(scope="module")
def ms() -> ModelSampling:
    return ModelSampling()


@pytest.mark.parametrize(("name", "scheduler", "mean", "std", "first3"), MEASURED, ids=[m[0] for m in MEASURED])
def test_measured_vectors(ms: ModelSampling, name: str, scheduler: str, mean: float, std: float,
                          first3: tuple[float, float, float]) -> None:
    sigmas = sampler_sigmas(ms, scheduler, 8, name)
    eps = torch.randn([1, 4, 8, 8], generator=torch.Generator().manual_seed(42))
    x = eps * (1 + sigmas[0] ** 2) ** 0.5
    out = SAMPLERS[name](toy_denoiser, x, sigmas, SamplerEnv(seed=42))
    tol = 2e-5
    assert out.mean().item() == pytest.approx(mean, abs=tol)
    assert out.std().item() == pytest.approx(std, abs=tol)
    assert out.flatten()[:3].tolist() == pytest.approx(list(first3), abs=max(tol, 1e-5))


def test_euler_single_step_by_hand() -> None:
    sigmas = torch.tensor([2.0, 0.5], dtype=torch.float32)
    x = torch.full([1, 4, 2, 2], 3.0)
    out = SAMPLERS["euler"](toy_denoiser, x, sigmas, SamplerEnv(seed=0))
    d0 = 0.8 * 3.0 / 5.0 + 0.1
    expected = 3.0 + (3.0 - d0) / 2.0 * (0.5 - 2.0)
    assert torch.allclose(out, torch.full_like(x, expected))


def test_dpmpp_2m_second_step_by_hand() -> None:
    s = [3.0, 1.0, 0.25]
    sigmas = torch.tensor([*s, 0.0], dtype=torch.float32)
    x0 = 2.0
    d = [x0]
    xs = [x0]

    def den(v: float, sig: float) -> float:
        return 0.8 * v / (1 + sig**2) + 0.1

    # step 0: first-order DPM-Solver++
    t = [-math.log(v) for v in s]
    denoised0 = den(xs[0], s[0])
    h = t[1] - t[0]
    xs.append(s[1] / s[0] * xs[0] - math.expm1(-h) * denoised0)
    # step 1: second order with r = h_last / h
    denoised1 = den(xs[1], s[1])
    h2 = t[2] - t[1]
    r = h / h2
    dd = (1 + 1 / (2 * r)) * denoised1 - (1 / (2 * r)) * denoised0
    xs.append(s[2] / s[1] * xs[1] - math.expm1(-h2) * dd)
    xs.append(den(xs[2], s[2]))  # last step to 0 returns D
    out = SAMPLERS["dpmpp_2m"](toy_denoiser, torch.full([1, 1, 1, 1], x0), sigmas, SamplerEnv(seed=0))
    assert out.item() == pytest.approx(xs[-1], rel=1e-5)
    del d


def test_ancestral_draws_from_seed_plus_one_on_cpu() -> None:
    sigmas = torch.tensor([1.0, 0.5], dtype=torch.float32)
    x = torch.zeros([1, 4, 2, 2])
    out = SAMPLERS["euler_ancestral"](toy_denoiser, x, sigmas, SamplerEnv(seed=5))
    up = min(0.5, math.sqrt(0.25 * (1 - 0.25) / 1.0))
    down = math.sqrt(0.25 - up**2)
    z = torch.randn([1, 4, 2, 2], generator=torch.Generator().manual_seed(6))
    denoised = 0.1
    expected = 0.0 + (0.0 - denoised) / 1.0 * (down - 1.0) + z * up
    assert torch.allclose(out, expected, atol=1e-6)


def test_callback_gets_every_step_and_first_denoised() -> None:
    sigmas = torch.tensor([3.0, 2.0, 1.0, 0.0])
    seen: list[tuple[int, float]] = []
    env = SamplerEnv(seed=0, callback=lambda i, den, x: seen.append((i, den.mean().item())))
    SAMPLERS["heun"](toy_denoiser, torch.ones([1, 1, 1, 1]), sigmas, env)
    assert [i for i, _ in seen] == [0, 1, 2]
    assert seen[0][1] == pytest.approx(0.8 / 10 + 0.1)


def test_registry_names() -> None:
    assert len(SAMPLER_NAMES) == 44
    assert SAMPLER_NAMES[0] == "euler" and SAMPLER_NAMES[-1] == "uni_pc_bh2"
    assert IMPLEMENTED_SAMPLERS == SAMPLER_NAMES
