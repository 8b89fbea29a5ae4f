"""ComfyUI's custom-sampling nodes: declarations against ComfyUI 0.8.0's, schedules and sigma operations
against ComfyUI's formulas, dual-CFG guidance, stored values, and parity with KSampler (tiny models, CPU)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from comfymesh.artifacts import ArtifactStore, decode_value, encode_value
from comfymesh.catalog import Catalog
from comfymesh.contracts.errors import NodeInputError
from comfymesh.diffusion.nodes import nodes
from comfymesh.diffusion.sampling import custom
from comfymesh.diffusion.sampling.guidance import CondEntry, GuidedDenoiser
from comfymesh.diffusion.sampling.model_sampling import ModelSampling
from comfymesh.diffusion.sampling.samplers import SAMPLER_NAMES
from comfymesh.diffusion.sampling.schedulers import calculate_sigmas
from comfymesh.stage.node import NodeContext

GOLDEN = Path(__file__).parents[2] / "golden" / "custom_sampling_object_info.json"
MS = ModelSampling()


def run(ctx: NodeContext, name: str, **inputs: Any) -> tuple[Any, ...]:
    return nodes.impls[name](ctx, **inputs)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    peak = float(torch.maximum(a.abs().max(), b.abs().max()))
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


# --- declarations ---------------------------------------------------------------------------------------


def test_object_info_equals_comfyui_080() -> None:
    golden = json.loads(GOLDEN.read_text())
    golden.pop("_about")
    # ComfyUI lists its 44 samplers, and we run all of them
    assert golden["KSamplerSelect"]["input"]["required"]["sampler_name"][1]["options"] == list(SAMPLER_NAMES)
    assert {name: nodes.schemas[name].object_info() for name in golden} == golden


# --- schedules ------------------------------------------------------------------------------------------


@pytest.fixture
def model(node_ctx: NodeContext) -> dict[str, Any]:
    return run(node_ctx, "CheckpointLoaderSimple", ckpt_name="sd15.safetensors")[0]


def test_basic_scheduler_is_the_named_schedule(node_ctx: NodeContext, model: dict[str, Any]) -> None:
    for scheduler in ("karras", "normal", "beta", "sgm_uniform"):
        (sigmas,) = run(node_ctx, "BasicScheduler", model=model, scheduler=scheduler, steps=10, denoise=1.0)
        assert torch.equal(sigmas, calculate_sigmas(MS, scheduler, 10))
    # denoise 0.5: the last 11 of the 20-step schedule (reference table of diffusion-semantics.md)
    (sigmas,) = run(node_ctx, "BasicScheduler", model=model, scheduler="normal", steps=10, denoise=0.5)
    reference = [1.48058, 1.24581, 1.04814, 0.87843, 0.72972, 0.59643, 0.47358, 0.35555, 0.23216, 0.02917, 0]
    assert sigmas.tolist() == pytest.approx(reference, abs=1e-5)
    (none,) = run(node_ctx, "BasicScheduler", model=model, scheduler="normal", steps=10, denoise=0.0)
    assert none.shape == (0,)


def test_sigma_range_schedulers_follow_k_diffusion(node_ctx: NodeContext) -> None:
    (karras,) = run(node_ctx, "KarrasScheduler", steps=8, sigma_max=14.614642, sigma_min=0.0291675, rho=7.0)
    assert torch.allclose(karras, calculate_sigmas(MS, "karras", 8), rtol=1e-4)
    (karras3,) = run(node_ctx, "KarrasScheduler", steps=3, sigma_max=10.0, sigma_min=0.1, rho=3.0)
    assert karras3.tolist() == pytest.approx([10.0, ((10 ** (1 / 3) + 0.1 ** (1 / 3)) / 2) ** 3, 0.1, 0.0], rel=1e-6)
    (expo,) = run(node_ctx, "ExponentialScheduler", steps=8, sigma_max=14.614642, sigma_min=0.0291675)
    assert torch.allclose(expo, calculate_sigmas(MS, "exponential", 8), rtol=1e-4)
    (expo3,) = run(node_ctx, "ExponentialScheduler", steps=3, sigma_max=4.0, sigma_min=1.0)
    assert expo3.tolist() == pytest.approx([4.0, 2.0, 1.0, 0.0], rel=1e-6)


def test_model_schedulers(node_ctx: NodeContext, model: dict[str, Any]) -> None:
    (beta,) = run(node_ctx, "BetaSamplingScheduler", model=model, steps=10, alpha=0.6, beta=0.6)
    assert torch.equal(beta, calculate_sigmas(MS, "beta", 10))
    (skewed,) = run(node_ctx, "BetaSamplingScheduler", model=model, steps=10, alpha=0.3, beta=1.0)
    assert not torch.equal(skewed, beta) and skewed[-1] == 0
    # σ(t) through the log-σ table, as ComfyUI's model_sampling.sigma (an ulp off the table's σ_t at times)
    def at(*timesteps: int) -> list[float]:
        return [float(MS.sigma(torch.tensor(float(t)))) for t in timesteps] + [0.0]

    (turbo,) = run(node_ctx, "SDTurboScheduler", model=model, steps=1, denoise=1.0)
    assert turbo.tolist() == at(999) and turbo[0] == pytest.approx(float(MS.sigma_max))
    (turbo,) = run(node_ctx, "SDTurboScheduler", model=model, steps=4, denoise=1.0)
    assert turbo.tolist() == at(999, 899, 799, 699)
    (turbo,) = run(node_ctx, "SDTurboScheduler", model=model, steps=2, denoise=0.5)  # starts 5 entries in
    assert turbo.tolist() == at(499, 399)


# --- sigma operations -----------------------------------------------------------------------------------


def test_sigma_operations(node_ctx: NodeContext) -> None:
    sigmas = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.0])
    high, low = run(node_ctx, "SplitSigmas", sigmas=sigmas, step=2)
    assert high.tolist() == [8.0, 4.0, 2.0] and low.tolist() == [2.0, 1.0, 0.0]
    high, low = run(node_ctx, "SplitSigmasDenoise", sigmas=sigmas, denoise=0.5)  # round(4 · 0.5) = 2 low steps
    assert high.tolist() == [8.0, 4.0, 2.0] and low.tolist() == [2.0, 1.0, 0.0]
    high, low = run(node_ctx, "SplitSigmasDenoise", sigmas=sigmas, denoise=0.625)  # round(2.5) = 2, half to even
    assert low.tolist() == [2.0, 1.0, 0.0]
    high, low = run(node_ctx, "SplitSigmasDenoise", sigmas=sigmas, denoise=0.0)  # ComfyUI: nothing high
    assert high.tolist() == [] and low.tolist() == [0.0]
    (flipped,) = run(node_ctx, "FlipSigmas", sigmas=sigmas)
    assert flipped.tolist() == pytest.approx([0.0001, 1.0, 2.0, 4.0, 8.0])
    assert sigmas.tolist() == [8.0, 4.0, 2.0, 1.0, 0.0]  # inputs are never changed
    (empty,) = run(node_ctx, "FlipSigmas", sigmas=torch.zeros(0))
    assert empty.shape == (0,)
    (first,) = run(node_ctx, "SetFirstSigma", sigmas=sigmas, sigma=136.0)
    assert first.tolist() == [136.0, 4.0, 2.0, 1.0, 0.0] and sigmas[0] == 8.0
    with pytest.raises(NodeInputError, match="empty"):
        run(node_ctx, "SetFirstSigma", sigmas=torch.zeros(0), sigma=1.0)


# --- values ---------------------------------------------------------------------------------------------


def test_sampler_and_noise_values(node_ctx: NodeContext) -> None:
    assert run(node_ctx, "KSamplerSelect", sampler_name="dpmpp_2m") == ({"kind": "sampler", "name": "dpmpp_2m"},)
    assert run(node_ctx, "RandomNoise", noise_seed=7) == ({"kind": "noise", "seed": 7, "disabled": False},)
    assert run(node_ctx, "DisableNoise") == ({"kind": "noise", "seed": 0, "disabled": True},)


# --- guidance -------------------------------------------------------------------------------------------


def _toy_unet(x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    # an eps prediction that depends on the conditioning, per row
    return 0.3 * x + ctx.mean(dim=(1, 2)).reshape(-1, 1, 1, 1) * (1 + t.reshape(-1, 1, 1, 1) / 1000)


def _entry(value: float) -> CondEntry:
    return CondEntry(torch.full((1, 3, 4), value))


@pytest.mark.parametrize(("cfg", "cfg2", "style"), [(5.0, 2.0, "regular"), (5.0, 1.0, "regular"),
                                                    (1.0, 1.0, "regular"), (3.0, 2.5, "nested")])
def test_dual_cfg_formula(cfg: float, cfg2: float, style: str) -> None:
    x, sigma = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0)), torch.tensor(3.0)

    def alone(entry: CondEntry) -> torch.Tensor:
        return GuidedDenoiser(_toy_unet, MS, "eps", [entry], [], 1.0, torch.float32)(x, sigma)

    p, m, n = alone(_entry(0.5)), alone(_entry(-0.2)), alone(_entry(0.1))
    dual = custom.DualCFGDenoiser(_toy_unet, MS, "eps", [_entry(0.5)], [_entry(-0.2)], [_entry(0.1)], cfg, cfg2,
                                  style == "nested", torch.float32)
    expected = n + cfg2 * (m + (p - m) * cfg - n) if style == "nested" else n + (m - n) * cfg2 + (p - m) * cfg
    assert torch.allclose(dual(x, sigma), expected, atol=1e-5)


# --- sampling: parity with KSampler ---------------------------------------------------------------------


def _setup(ctx: NodeContext, ckpt: str = "sd15.safetensors") -> dict[str, Any]:
    model, clip, _ = run(ctx, "CheckpointLoaderSimple", ckpt_name=ckpt)
    (pos,) = run(ctx, "CLIPTextEncode", text="a red cat", clip=clip)
    (neg,) = run(ctx, "CLIPTextEncode", text="blurry", clip=clip)
    (latent,) = run(ctx, "EmptyLatentImage", width=64, height=64, batch_size=2)
    return {"model": model, "positive": pos, "negative": neg, "latent": latent}


def _advanced(ctx: NodeContext, s: dict[str, Any], *, sampler: str, scheduler: str, steps: int = 4,
              cfg: float = 6.0, seed: int = 3, noise: str = "RandomNoise", guider: str = "CFGGuider",
              store: ArtifactStore | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    (noise_value,) = run(ctx, noise, **({"noise_seed": seed} if noise == "RandomNoise" else {}))
    if guider == "CFGGuider":
        (guide,) = run(ctx, guider, model=s["model"], positive=s["positive"], negative=s["negative"], cfg=cfg)
    else:
        (guide,) = run(ctx, guider, model=s["model"], conditioning=s["positive"])
    (sampler_value,) = run(ctx, "KSamplerSelect", sampler_name=sampler)
    (sigmas,) = run(ctx, "BasicScheduler", model=s["model"], scheduler=scheduler, steps=steps, denoise=1.0)
    if store is not None:  # as the orchestrator's cache stores them and a later job reads them back
        guide = decode_value(encode_value("GUIDER", guide, store), store)
        sigmas = decode_value(encode_value("SIGMAS", sigmas, store), store)
    out, denoised = run(ctx, "SamplerCustomAdvanced", noise=noise_value, guider=guide, sampler=sampler_value,
                        sigmas=sigmas, latent_image=s["latent"])
    return out, denoised


def _ksampler(ctx: NodeContext, s: dict[str, Any], *, sampler: str, scheduler: str, steps: int = 4,
              cfg: float = 6.0, seed: int = 3) -> torch.Tensor:
    (out,) = run(ctx, "KSampler", model=s["model"], seed=seed, steps=steps, cfg=cfg, sampler_name=sampler,
                 scheduler=scheduler, positive=s["positive"], negative=s["negative"], latent_image=s["latent"])
    return out["samples"]


@pytest.mark.parametrize(("sampler", "scheduler"), [("euler", "karras"), ("euler_ancestral", "normal"),
                                                    ("dpmpp_2m", "simple")])
def test_sampler_custom_advanced_reproduces_ksampler(node_ctx: NodeContext, sampler: str, scheduler: str) -> None:
    s = _setup(node_ctx)
    out, denoised = _advanced(node_ctx, s, sampler=sampler, scheduler=scheduler)
    expected = _ksampler(node_ctx, s, sampler=sampler, scheduler=scheduler)
    assert torch.equal(out["samples"], expected), psnr(out["samples"], expected)
    assert denoised["samples"].shape == expected.shape
    if sampler == "euler":  # the last euler step lands on its own x0 prediction
        assert torch.allclose(denoised["samples"], out["samples"], atol=1e-4)


def test_sampler_custom_reproduces_ksampler_on_sdxl(node_ctx: NodeContext) -> None:
    s = _setup(node_ctx, "sdxl.safetensors")
    (sampler_value,) = run(node_ctx, "KSamplerSelect", sampler_name="heun")
    (sigmas,) = run(node_ctx, "BasicScheduler", model=s["model"], scheduler="karras", steps=3, denoise=1.0)
    out, _ = run(node_ctx, "SamplerCustom", model=s["model"], add_noise=True, noise_seed=5, cfg=4.0,
                 positive=s["positive"], negative=s["negative"], sampler=sampler_value, sigmas=sigmas,
                 latent_image=s["latent"])
    assert torch.equal(out["samples"], _ksampler(node_ctx, s, sampler="heun", scheduler="karras", steps=3, cfg=4.0,
                                                 seed=5))


def test_stored_guider_and_sigmas_give_the_same_result(node_ctx: NodeContext, tmp_path: Path) -> None:
    s = _setup(node_ctx)
    direct, _ = _advanced(node_ctx, s, sampler="euler", scheduler="karras")
    stored, _ = _advanced(node_ctx, s, sampler="euler", scheduler="karras", store=ArtifactStore(tmp_path.as_uri()))
    assert torch.equal(direct["samples"], stored["samples"])


def test_disable_noise_is_ksampler_advanced_without_noise(node_ctx: NodeContext) -> None:
    s = _setup(node_ctx)
    s["latent"] = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))}
    out, _ = _advanced(node_ctx, s, sampler="euler_ancestral", scheduler="normal", noise="DisableNoise")
    (expected,) = run(node_ctx, "KSamplerAdvanced", model=s["model"], add_noise="disable", noise_seed=0, steps=4,
                      cfg=6.0, sampler_name="euler_ancestral", scheduler="normal", positive=s["positive"],
                      negative=s["negative"], latent_image=s["latent"])
    assert torch.equal(out["samples"], expected["samples"])


def test_basic_guider_is_ksampler_at_cfg_1(node_ctx: NodeContext) -> None:
    s = _setup(node_ctx)
    out, _ = _advanced(node_ctx, s, sampler="euler", scheduler="karras", guider="BasicGuider")
    assert torch.equal(out["samples"], _ksampler(node_ctx, s, sampler="euler", scheduler="karras", cfg=1.0))


def test_dual_cfg_guider_samples(node_ctx: NodeContext) -> None:
    s = _setup(node_ctx)
    (guide,) = run(node_ctx, "DualCFGGuider", model=s["model"], cond1=s["positive"], cond2=s["negative"],
                   negative=s["negative"], cfg_conds=6.0, cfg_cond2_negative=1.0, style="regular")
    (noise,) = run(node_ctx, "RandomNoise", noise_seed=3)
    (sampler_value,) = run(node_ctx, "KSamplerSelect", sampler_name="euler")
    (sigmas,) = run(node_ctx, "BasicScheduler", model=s["model"], scheduler="karras", steps=4, denoise=1.0)
    out, _ = run(node_ctx, "SamplerCustomAdvanced", noise=noise, guider=guide, sampler=sampler_value, sigmas=sigmas,
                 latent_image=s["latent"])
    # cond2 = negative and cfg2 = 1: plain CFG of cond1 against the negative
    expected = _ksampler(node_ctx, s, sampler="euler", scheduler="karras")
    assert psnr(out["samples"], expected) >= 40


def test_empty_sigmas_return_the_latent_and_bad_inputs_are_named(node_ctx: NodeContext) -> None:
    s = _setup(node_ctx)
    (noise,) = run(node_ctx, "RandomNoise", noise_seed=3)
    (guide,) = run(node_ctx, "BasicGuider", model=s["model"], conditioning=s["positive"])
    (sampler_value,) = run(node_ctx, "KSamplerSelect", sampler_name="euler")
    out, denoised = run(node_ctx, "SamplerCustomAdvanced", noise=noise, guider=guide, sampler=sampler_value,
                        sigmas=torch.zeros(0), latent_image=s["latent"])
    assert torch.equal(out["samples"], s["latent"]["samples"]) and denoised is out
    with pytest.raises(NodeInputError, match="expected a GUIDER") as info:
        run(node_ctx, "SamplerCustomAdvanced", noise=noise, guider=noise, sampler=sampler_value,
            sigmas=torch.ones(2), latent_image=s["latent"])
    assert info.value.node_id == "7"


def test_the_catalog_reads_v3_combo_choices(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path, nodes.object_info())
    assert catalog.choices("KSamplerSelect", "sampler_name") == list(SAMPLER_NAMES)
    assert catalog.choices("DualCFGGuider", "style") == ["regular", "nested"]
    assert catalog.choices("KSampler", "sampler_name") == list(SAMPLER_NAMES)  # the legacy form too
