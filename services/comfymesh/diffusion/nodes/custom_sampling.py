"""ComfyUI's custom-sampling nodes (comfy_extras.nodes_custom_sampler, V3 declarations): samplers, noise,
schedulers, sigma operations, guiders and SamplerCustom / SamplerCustomAdvanced.

The values they pass (SAMPLER, NOISE, SIGMAS, GUIDER) are described in `sampling.custom`. Sampling with a
CFG guider goes through the cross-job batcher as KSampler does, so the same sampler, schedule, cfg and
seed give KSampler's result; basic and dual-CFG guiders sample on their own."""

from __future__ import annotations

import re
from typing import Any

import torch

from comfymesh.catalog.schema import Boolean, ComboV3, Float, Input, Int, Link, Output, String
from comfymesh.contracts.errors import NodeInputError
from comfymesh.contracts.handles import HandleKind, ModelHandle
from comfymesh.diffusion.models.cache import get_model_cache
from comfymesh.diffusion.nodes.controlnet import bind_controls
from comfymesh.diffusion.nodes.failures import node
from comfymesh.diffusion.nodes.handles import checkpoint_of, expect_handle, loras_of
from comfymesh.diffusion.nodes.model_patches import apply_model_sampling
from comfymesh.diffusion.nodes.registry import nodes
from comfymesh.diffusion.nodes.sampling import step_reporter, weights_key
from comfymesh.diffusion.sampling import custom
from comfymesh.diffusion.sampling.batching import get_batcher
from comfymesh.diffusion.sampling.ksampler import SamplingModel, cond_entries, prepare_with_sigmas, run_prepared
from comfymesh.diffusion.sampling.samplers import SAMPLER_NAMES
from comfymesh.diffusion.sampling.schedulers import SCHEDULER_NAMES
from comfymesh.diffusion.sampling.schedulers.beta import schedule as beta_schedule
from comfymesh.diffusion.sampling.schedulers.exponential import exponential_sigmas
from comfymesh.diffusion.sampling.schedulers.karras import karras_sigmas
from comfymesh.stage.node import NodeContext

MODULE = "comfy_extras.nodes_custom_sampler"
SEED_MAX = 0xFFFFFFFFFFFFFFFF
Latent = dict[str, Any]


def define(name: str, category: str, inputs: list[Input], outputs: list[Output]) -> Any:
    """A V3 node of ComfyUI's custom-sampling module, as 0.8.0 declares it in `/object_info`."""
    return nodes.define(name, category=f"sampling/custom_sampling{category}", display_name=None,
                        python_module=MODULE, inputs=inputs, outputs=outputs, deprecated=False, experimental=False,
                        api_node=False, output_matchtypes=None, output_tooltips=[None] * len(outputs))


def _sampling_model(ctx: NodeContext, model: Any) -> tuple[ModelHandle, SamplingModel]:
    model = expect_handle(ctx, model, HandleKind.MODEL)
    sm = get_model_cache().sampling_model(checkpoint_of(ctx, model), loras_of(ctx, model))
    return model, apply_model_sampling(ctx, model, sm)


# --- samplers and noise ---------------------------------------------------------------------------------


@define("KSamplerSelect", "/samplers", [ComboV3("sampler_name", SAMPLER_NAMES)], [Output("SAMPLER")])
@node
def ksampler_select(ctx: NodeContext, sampler_name: str) -> tuple[custom.Value]:
    return (custom.sampler_value(sampler_name),)


@define("RandomNoise", "/noise",
        [Int("noise_seed", 0, min=0, max=SEED_MAX, control_after_generate=True)], [Output("NOISE")])
@node
def random_noise(ctx: NodeContext, noise_seed: int) -> tuple[custom.Value]:
    return (custom.noise_value(noise_seed),)


@define("DisableNoise", "/noise", [], [Output("NOISE")])
@node
def disable_noise(ctx: NodeContext) -> tuple[custom.Value]:
    return (custom.noise_value(0, disabled=True),)


# --- schedulers -----------------------------------------------------------------------------------------


def _sigma_range() -> list[Input]:
    return [Float("sigma_max", 14.614642, min=0.0, max=5000.0, step=0.01, round=False),
            Float("sigma_min", 0.0291675, min=0.0, max=5000.0, step=0.01, round=False)]


@define("BasicScheduler", "/schedulers",
        [Link("model", "MODEL", {}), ComboV3("scheduler", SCHEDULER_NAMES), Int("steps", 20, min=1, max=10000),
         Float("denoise", 1.0, min=0.0, max=1.0, step=0.01)],
        [Output("SIGMAS")])
@node
def basic_scheduler(ctx: NodeContext, model: Any, scheduler: str, steps: int, denoise: float) -> tuple[torch.Tensor]:
    ckpt = checkpoint_of(ctx, expect_handle(ctx, model, HandleKind.MODEL))
    return (custom.basic_sigmas(ckpt.sampling, scheduler, int(steps), float(denoise)),)


@define("KarrasScheduler", "/schedulers",
        [Int("steps", 20, min=1, max=10000), *_sigma_range(),
         Float("rho", 7.0, min=0.0, max=100.0, step=0.01, round=False)],
        [Output("SIGMAS")])
@node
def karras_scheduler(ctx: NodeContext, steps: int, sigma_max: float, sigma_min: float,
                     rho: float) -> tuple[torch.Tensor]:
    return (karras_sigmas(int(steps), float(sigma_min), float(sigma_max), float(rho)),)


@define("ExponentialScheduler", "/schedulers", [Int("steps", 20, min=1, max=10000), *_sigma_range()],
        [Output("SIGMAS")])
@node
def exponential_scheduler(ctx: NodeContext, steps: int, sigma_max: float, sigma_min: float) -> tuple[torch.Tensor]:
    return (exponential_sigmas(int(steps), float(sigma_min), float(sigma_max)),)


@define("SDTurboScheduler", "/schedulers",
        [Link("model", "MODEL", {}), Int("steps", 1, min=1, max=10), Float("denoise", 1.0, min=0, max=1.0, step=0.01)],
        [Output("SIGMAS")])
@node
def sd_turbo_scheduler(ctx: NodeContext, model: Any, steps: int, denoise: float) -> tuple[torch.Tensor]:
    ckpt = checkpoint_of(ctx, expect_handle(ctx, model, HandleKind.MODEL))
    return (custom.sd_turbo_sigmas(ckpt.sampling, int(steps), float(denoise)),)


@define("BetaSamplingScheduler", "/schedulers",
        [Link("model", "MODEL", {}), Int("steps", 20, min=1, max=10000),
         Float("alpha", 0.6, min=0.0, max=50.0, step=0.01, round=False),
         Float("beta", 0.6, min=0.0, max=50.0, step=0.01, round=False)],
        [Output("SIGMAS")])
@node
def beta_sampling_scheduler(ctx: NodeContext, model: Any, steps: int, alpha: float,
                            beta: float) -> tuple[torch.Tensor]:
    ckpt = checkpoint_of(ctx, expect_handle(ctx, model, HandleKind.MODEL))
    return (beta_schedule(ckpt.sampling, int(steps), float(alpha), float(beta)),)


# --- sigma operations -----------------------------------------------------------------------------------


@define("SplitSigmas", "/sigmas", [Link("sigmas", "SIGMAS", {}), Int("step", 0, min=0, max=10000)],
        [Output("SIGMAS", "high_sigmas"), Output("SIGMAS", "low_sigmas")])
@node
def split_sigmas(ctx: NodeContext, sigmas: Any, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    return custom.split_sigmas(custom.as_sigmas(sigmas), int(step))


@define("SplitSigmasDenoise", "/sigmas",
        [Link("sigmas", "SIGMAS", {}), Float("denoise", 1.0, min=0.0, max=1.0, step=0.01)],
        [Output("SIGMAS", "high_sigmas"), Output("SIGMAS", "low_sigmas")])
@node
def split_sigmas_denoise(ctx: NodeContext, sigmas: Any, denoise: float) -> tuple[torch.Tensor, torch.Tensor]:
    return custom.split_sigmas_denoise(custom.as_sigmas(sigmas), float(denoise))


@define("FlipSigmas", "/sigmas", [Link("sigmas", "SIGMAS", {})], [Output("SIGMAS")])
@node
def flip_sigmas(ctx: NodeContext, sigmas: Any) -> tuple[torch.Tensor]:
    return (custom.flip_sigmas(custom.as_sigmas(sigmas)),)


@define("SetFirstSigma", "/sigmas",
        [Link("sigmas", "SIGMAS", {}), Float("sigma", 136.0, min=0.0, max=20000.0, step=0.001, round=False)],
        [Output("SIGMAS")])
@node
def set_first_sigma(ctx: NodeContext, sigmas: Any, sigma: float) -> tuple[torch.Tensor]:
    return (custom.set_first_sigma(custom.as_sigmas(sigmas), float(sigma)),)


# ComfyUI's pattern for the numbers of a ManualSigmas string (any separators between them)
SIGMA_NUMBER = re.compile(r"[-+]?(?:\d*\.*\d+)")


@nodes.define("ManualSigmas", category="_for_testing/custom_sampling", display_name=None, python_module=MODULE,
              inputs=[String("sigmas", "1, 0.5", multiline=False)], outputs=[Output("SIGMAS")], deprecated=False,
              experimental=True, api_node=False, output_matchtypes=None, output_tooltips=[None])
@node
def manual_sigmas(ctx: NodeContext, sigmas: str) -> tuple[torch.Tensor]:
    numbers = SIGMA_NUMBER.findall(str(sigmas))
    try:
        return (torch.tensor([float(number) for number in numbers], dtype=torch.float32),)
    except ValueError as exc:
        raise NodeInputError(f"sigmas: {exc} (write numbers such as '14.6, 7.2, 0')", node_id=ctx.node_id) from exc


# --- guiders --------------------------------------------------------------------------------------------


def _cfg_input(name: str) -> Input:
    return Float(name, 8.0, min=0.0, max=100.0, step=0.1, round=0.01)


@define("CFGGuider", "/guiders",
        [Link("model", "MODEL", {}), Link("positive", "CONDITIONING", {}), Link("negative", "CONDITIONING", {}),
         _cfg_input("cfg")],
        [Output("GUIDER")])
@node
def cfg_guider(ctx: NodeContext, model: Any, positive: list[Any], negative: list[Any],
               cfg: float) -> tuple[custom.Value]:
    model = expect_handle(ctx, model, HandleKind.MODEL)
    return (custom.guider_value("cfg", model, {"positive": positive, "negative": negative}, cfg),)


@define("DualCFGGuider", "/guiders",
        [Link("model", "MODEL", {}), Link("cond1", "CONDITIONING", {}), Link("cond2", "CONDITIONING", {}),
         Link("negative", "CONDITIONING", {}), _cfg_input("cfg_conds"), _cfg_input("cfg_cond2_negative"),
         ComboV3("style", ["regular", "nested"])],
        [Output("GUIDER")])
@node
def dual_cfg_guider(ctx: NodeContext, model: Any, cond1: list[Any], cond2: list[Any], negative: list[Any],
                    cfg_conds: float, cfg_cond2_negative: float, style: str = "regular") -> tuple[custom.Value]:
    model = expect_handle(ctx, model, HandleKind.MODEL)
    conds = {"positive": cond1, "middle": cond2, "negative": negative}
    return (custom.guider_value("dual", model, conds, cfg_conds, cfg2=float(cfg_cond2_negative), style=style),)


@define("BasicGuider", "/guiders", [Link("model", "MODEL", {}), Link("conditioning", "CONDITIONING", {})],
        [Output("GUIDER")])
@node
def basic_guider(ctx: NodeContext, model: Any, conditioning: list[Any]) -> tuple[custom.Value]:
    model = expect_handle(ctx, model, HandleKind.MODEL)
    return (custom.guider_value("basic", model, {"positive": conditioning}, 1.0),)


# --- sampling -------------------------------------------------------------------------------------------


def sample_custom(ctx: NodeContext, noise: Any, guider: Any, sampler: Any, sigmas: Any,
                  latent_image: Latent) -> tuple[Latent, Latent]:
    """`output` and `denoised_output` (the last step's x0 prediction; `output` when no step ran)."""
    noise = custom.expect_value(noise, "noise")
    guider = custom.expect_value(guider, "guider")
    sampler_name = custom.expect_value(sampler, "sampler")["name"]
    model, sm = _sampling_model(ctx, guider["model"])
    conds, kind = guider["conds"], guider["type"]
    conds = bind_controls(ctx, sm, **conds)
    prep = prepare_with_sigmas(sm, custom.as_sigmas(sigmas), seed=noise["seed"], cfg=guider["cfg"],
                               sampler_name=sampler_name, positive=conds["positive"] or [], negative=conds.get("negative"),
                               latent=latent_image, add_noise=not noise["disabled"])
    if isinstance(prep, dict):
        return prep, prep
    reporter = step_reporter(ctx, sm)
    last: dict[str, torch.Tensor] = {}

    def on_step(i: int, total: int, denoised: torch.Tensor) -> None:
        last["x0"] = denoised
        reporter(i, total, denoised)

    with torch.no_grad():
        if kind == "cfg":
            out = get_batcher().sample(weights_key(model), prep, job=ctx.job_id, on_step=on_step,
                                       check_cancelled=ctx.check_cancelled)
        else:
            guide = None
            if kind == "dual":
                hw = (prep.x.shape[2], prep.x.shape[3])
                guide = custom.DualCFGDenoiser(
                    sm.unet, sm.sampling, sm.prediction, prep.positive, cond_entries(conds["middle"] or [], sm, hw, "cond2"),
                    prep.negative, prep.cfg, float(guider["cfg2"]), guider.get("style") == "nested", sm.dtype,
                    before_eval=ctx.check_cancelled)
            out = run_prepared(prep, on_step, ctx.check_cancelled, guide=guide)
    reporter.finish()
    if "x0" not in last:
        return out, out
    return out, {**prep.latent, "samples": sm.latent_format.process_out(last["x0"]).float().cpu()}


_OUTPUTS = [Output("LATENT", "output"), Output("LATENT", "denoised_output")]


@define("SamplerCustom", "",
        [Link("model", "MODEL", {}), Boolean("add_noise", True),
         Int("noise_seed", 0, min=0, max=SEED_MAX, control_after_generate=True), _cfg_input("cfg"),
         Link("positive", "CONDITIONING", {}), Link("negative", "CONDITIONING", {}), Link("sampler", "SAMPLER", {}),
         Link("sigmas", "SIGMAS", {}), Link("latent_image", "LATENT", {})],
        _OUTPUTS)
@node
def sampler_custom(ctx: NodeContext, model: Any, add_noise: bool, noise_seed: int, cfg: float, positive: list[Any],
                   negative: list[Any], sampler: Any, sigmas: Any, latent_image: Latent) -> tuple[Latent, Latent]:
    # ComfyUI passes noise_seed on as the samplers' seed even when no initial noise is added
    model = expect_handle(ctx, model, HandleKind.MODEL)
    guider = custom.guider_value("cfg", model, {"positive": positive, "negative": negative}, cfg)
    return sample_custom(ctx, custom.noise_value(noise_seed, disabled=not add_noise), guider, sampler, sigmas,
                         latent_image)


@define("SamplerCustomAdvanced", "",
        [Link("noise", "NOISE", {}), Link("guider", "GUIDER", {}), Link("sampler", "SAMPLER", {}),
         Link("sigmas", "SIGMAS", {}), Link("latent_image", "LATENT", {})],
        _OUTPUTS)
@node
def sampler_custom_advanced(ctx: NodeContext, noise: Any, guider: Any, sampler: Any, sigmas: Any,
                            latent_image: Latent) -> tuple[Latent, Latent]:
    return sample_custom(ctx, noise, guider, sampler, sigmas, latent_image)
