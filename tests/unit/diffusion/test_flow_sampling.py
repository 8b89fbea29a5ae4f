"""Flow-matching sampling (ComfyUI's ModelSamplingDiscreteFlow + CONST) against its formulas, with numbers
worked out by hand: the shifted σ table, the schedules on it, the denoiser's flow parameterisation, the start
point, and one step of euler and res_multistep."""

from __future__ import annotations

import math

import pytest
import torch

from comfymesh.diffusion.latents.formats import FLUX, for_family
from comfymesh.diffusion.sampling.flow_sampling import FlowModelSampling, inverse_noise_scaling, noise_scaling
from comfymesh.diffusion.sampling.guidance import CondEntry, GuidedDenoiser
from comfymesh.diffusion.sampling.samplers import SAMPLERS, SamplerEnv
from comfymesh.diffusion.sampling.schedulers import calculate_sigmas


def shifted(shift: float, t: float) -> float:
    return shift * t / (1 + (shift - 1) * t)


def test_table_is_the_shifted_flow_time() -> None:
    ms = FlowModelSampling(shift=3.0, multiplier=1.0)
    assert ms.sigmas.shape == (1000,)
    for i in (0, 1, 499, 998, 999):
        assert float(ms.sigmas[i]) == pytest.approx(shifted(3.0, (i + 1) / 1000), rel=1e-6)
    assert float(ms.sigma_max) == pytest.approx(1.0)
    assert float(ms.sigma_min) == pytest.approx(0.003 / 1.002, rel=1e-6)
    # shift 1 leaves the time as it is
    assert torch.allclose(FlowModelSampling(1.0).sigmas, torch.arange(1, 1001) / 1000)


def test_timestep_is_sigma_times_the_multiplier() -> None:
    sigma = torch.tensor([0.25, 0.75])
    assert torch.allclose(FlowModelSampling(3.0, 1.0).timestep(sigma), sigma)
    assert torch.allclose(FlowModelSampling(3.0, 1000.0).timestep(sigma), torch.tensor([250.0, 750.0]))
    # σ(timestep) inverts it through the shift: timestep 500 of 1000 is t = 0.5
    assert float(FlowModelSampling(3.0, 1000.0).sigma(torch.tensor(500.0))) == pytest.approx(0.75)


def test_percent_to_sigma() -> None:
    ms = FlowModelSampling(3.0, 1.0)
    assert ms.percent_to_sigma(0.0) == 1.0
    assert ms.percent_to_sigma(1.0) == 0.0
    assert ms.percent_to_sigma(0.5) == pytest.approx(0.75)
    assert ms.percent_to_sigma(0.8) == pytest.approx(shifted(3.0, 0.2))


def test_simple_schedule_of_the_default_graph() -> None:
    # Z-Image turbo: ModelSamplingAuraFlow shift 3, simple scheduler; 2 steps take table entries 999 and 499
    sigmas = calculate_sigmas(FlowModelSampling(3.0, 1.0), "simple", 2)
    assert sigmas.tolist() == pytest.approx([1.0, 0.75, 0.0])
    eight = calculate_sigmas(FlowModelSampling(3.0, 1.0), "simple", 8)
    expected = [shifted(3.0, (1000 - int(k * 125)) / 1000) for k in range(8)] + [0.0]
    assert eight.tolist() == pytest.approx(expected, rel=1e-6)


def test_noise_scaling_and_inverse() -> None:
    noise, latent = torch.full((1, 1), 2.0), torch.full((1, 1), -1.0)
    assert float(noise_scaling(torch.tensor(0.75), noise, latent)) == pytest.approx(0.75 * 2 - 0.25)
    assert float(inverse_noise_scaling(torch.tensor(0.5), torch.full((1,), 3.0))) == pytest.approx(6.0)


def test_flux_latent_format_shifts_then_scales() -> None:
    assert for_family("zimage") is FLUX and FLUX.channels == 16
    x = torch.tensor([1.0])
    assert float(FLUX.process_in(x)) == pytest.approx((1.0 - 0.1159) * 0.3611)
    assert float(FLUX.process_out(FLUX.process_in(x))) == pytest.approx(1.0)


def _flow_denoiser(seen: list[tuple[torch.Tensor, torch.Tensor]], multiplier: float = 1.0) -> GuidedDenoiser:
    def unet(x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        seen.append((x.clone(), t.clone()))
        return 0.5 * x + 0.2  # the model's output (ComfyUI's negated velocity)

    return GuidedDenoiser(unet, FlowModelSampling(3.0, multiplier), "flow", [CondEntry(torch.zeros(1, 3, 8))], [],
                          1.0, torch.float32)


def test_denoiser_takes_x_unscaled_and_predicts_x_minus_sigma_out() -> None:
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    x = torch.full((1, 2, 2, 2), 0.4)
    d = _flow_denoiser(seen, multiplier=1000.0)(x, torch.tensor(0.75))
    assert torch.equal(seen[0][0], x)  # no 1/√(σ²+1) scaling
    assert float(seen[0][1].reshape(-1)[0]) == pytest.approx(750.0)
    assert torch.allclose(d, x - 0.75 * (0.5 * x + 0.2))


def test_one_euler_step() -> None:
    x = torch.full((1, 1, 2, 2), 0.4)
    out = SAMPLERS["euler"](_flow_denoiser([]), x, torch.tensor([1.0, 0.75]), SamplerEnv(seed=0))
    d0 = 0.4 - 1.0 * (0.5 * 0.4 + 0.2)  # x0 at σ = 1
    expected = 0.4 + (0.4 - d0) / 1.0 * (0.75 - 1.0)
    assert torch.allclose(out, torch.full_like(x, expected))


def test_res_multistep_second_step() -> None:
    sigmas = torch.tensor([1.0, 0.75, 0.5])
    x = torch.full((1, 1, 1, 1), 0.4)
    out = SAMPLERS["res_multistep"](_flow_denoiser([]), x, sigmas, SamplerEnv(seed=0))

    def den(v: float, s: float) -> float:
        return v - s * (0.5 * v + 0.2)

    d0 = den(0.4, 1.0)
    x1 = 0.4 + (0.4 - d0) / 1.0 * (0.75 - 1.0)  # first step: Euler
    d1 = den(x1, 0.75)
    t, t_next, t_prev = -math.log(0.75), -math.log(0.5), -math.log(1.0)
    h = t_next - t
    c2 = (t_prev - t) / h
    phi1 = math.expm1(-h) / -h
    phi2 = (phi1 - 1) / -h
    b1, b2 = phi1 - phi2 / c2, phi2 / c2
    x2 = math.exp(-h) * x1 + h * (b1 * d1 + b2 * d0)
    assert float(out) == pytest.approx(x2, rel=1e-5)


def test_euler_ancestral_takes_the_rectified_flow_form() -> None:
    from comfymesh.diffusion.sampling.noise import DefaultNoise
    from comfymesh.diffusion.sampling.samplers import FLOW_SAMPLERS

    x = torch.full((1, 1, 2, 2), 0.4)
    out = FLOW_SAMPLERS["euler_ancestral"](_flow_denoiser([]), x, torch.tensor([1.0, 0.5]), SamplerEnv(seed=7))
    d0 = 0.4 - 1.0 * (0.5 * 0.4 + 0.2)
    sigma_down = 0.5 * (1 + (0.5 / 1.0 - 1))  # η = 1
    ratio = sigma_down / 1.0
    alpha_next, alpha_down = 0.5, 1 - sigma_down
    renoise = (0.5**2 - sigma_down**2 * alpha_next**2 / alpha_down**2) ** 0.5
    drawn = DefaultNoise(x, 7)(x)
    expected = (alpha_next / alpha_down) * (ratio * 0.4 + (1 - ratio) * d0) + drawn * renoise
    assert torch.allclose(out, expected, atol=1e-6)


def test_lcm_renoises_by_the_flows_noise_scaling() -> None:
    from comfymesh.diffusion.sampling.noise import DefaultNoise

    x = torch.full((1, 1, 2, 2), 0.4)
    out = SAMPLERS["lcm"](_flow_denoiser([]), x, torch.tensor([1.0, 0.5, 0.0]), SamplerEnv(seed=3, flow=True))
    d0 = 0.4 - 1.0 * (0.5 * 0.4 + 0.2)
    draws = DefaultNoise(x, 3)
    x1 = 0.5 * draws(x) + 0.5 * d0  # σ·noise + (1 − σ)·D, not D + σ·noise
    expected = x1 - 0.5 * (0.5 * x1 + 0.2)  # the last step returns D(x1, 0.5)
    assert torch.allclose(out, expected, atol=1e-6)


def test_dpmpp_2m_sde_steps_in_the_flows_half_log_snr() -> None:
    x = torch.full((1, 1, 2, 2), 0.4)
    env = SamplerEnv(seed=0, eta=0.0, flow=True)  # η = 0: the deterministic part alone
    out = SAMPLERS["dpmpp_2m_sde"](_flow_denoiser([]), x, torch.tensor([0.75, 0.5]), env)
    d0 = 0.4 - 0.75 * (0.5 * 0.4 + 0.2)
    h = math.log(0.5 / 0.5) - math.log(0.25 / 0.75)  # λ = log((1 − σ)/σ)
    alpha_t = 0.5  # σ_t·e^{λ_t} = 1 − σ_t
    expected = 0.5 / 0.75 * 0.4 + alpha_t * -math.expm1(-h) * d0
    assert float(out[0, 0, 0, 0]) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", ["dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m_sde",
                                  "dpmpp_2m_sde_heun", "dpmpp_3m_sde", "lcm"])
def test_every_sampler_runs_on_flow_models_from_pure_noise(name: str) -> None:
    from comfymesh.diffusion.sampling.ksampler import SamplingModel, prepare_with_sigmas, run_prepared

    model = SamplingModel(unet=lambda x, t, c, y: 0.5 * x + 0.2, sampling=FlowModelSampling(3.0, 1.0),
                          prediction="flow", latent_format=FLUX, family="zimage", context_dim=8, adm=None,
                          device=torch.device("cpu"), dtype=torch.float32, in_channels=16)
    latent = {"samples": torch.zeros(1, 16, 4, 4)}
    cond = [[torch.zeros(1, 3, 8), {}]]
    sigmas = calculate_sigmas(model.sampling, "simple", 4)
    assert float(sigmas[0]) == 1.0  # λ = −∞ there: the half-log-SNR samplers offset it, as ComfyUI does
    prep = prepare_with_sigmas(model, sigmas, seed=5, cfg=1.0, sampler_name=name, positive=cond, negative=cond,
                               latent=latent)
    assert not isinstance(prep, dict)
    out = run_prepared(prep)["samples"]
    assert torch.isfinite(out).all() and out.abs().max() > 0


def test_joint_context_entries_of_other_lengths_run_apart() -> None:
    lengths: list[int] = []

    def unet(x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        lengths.append(ctx.shape[1])
        return torch.zeros_like(x)

    pos, neg = CondEntry(torch.ones(1, 2, 8)), CondEntry(torch.ones(1, 4, 8))
    d = GuidedDenoiser(unet, FlowModelSampling(3.0, 1.0), "flow", [pos], [neg], 4.0, torch.float32)
    d.tile_context = False  # Z-Image: captions are tokens of the sequence, not keys to repeat
    d(torch.zeros(1, 16, 2, 2), torch.tensor(0.5))
    assert sorted(lengths) == [2, 4]
    lengths.clear()
    d.tile_context = True
    d(torch.zeros(1, 16, 2, 2), torch.tensor(0.5))
    assert lengths == [4]


def test_inpainting_renoises_the_original_as_a_flow_start_point() -> None:
    from comfymesh.diffusion.sampling.guidance import MaskedDenoiser

    seen: list[torch.Tensor] = []

    def inner(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return torch.zeros_like(x)

    mask = torch.tensor([[[[1.0, 0.0]]]])
    latent, noise = torch.full((1, 1, 1, 2), 2.0), torch.full((1, 1, 1, 2), -1.0)
    masked = MaskedDenoiser(inner, mask, latent, noise)
    masked.flow = True
    out = masked(torch.full((1, 1, 1, 2), 5.0), torch.tensor(0.25))
    assert seen[0].tolist() == [[[[5.0, 0.25 * -1.0 + 0.75 * 2.0]]]]
    assert out.tolist() == [[[[0.0, 2.0]]]]
