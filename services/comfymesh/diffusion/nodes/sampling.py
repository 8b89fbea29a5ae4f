"""Sampling nodes: KSampler and KSamplerAdvanced, through the cross-job batcher."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import torch

from comfymesh.catalog.schema import Combo, Float, Int, Link, Output
from comfymesh.contracts.handles import HandleKind, ModelHandle
from comfymesh.diffusion.latents.previews import latent_rgb_tensor
from comfymesh.diffusion.models.cache import get_model_cache
from comfymesh.diffusion.nodes.controlnet import bind_controls
from comfymesh.diffusion.nodes.failures import node
from comfymesh.diffusion.nodes.handles import checkpoint_of, expect_handle, loras_of, weights_identity
from comfymesh.diffusion.nodes.model_patches import apply_model_sampling
from comfymesh.diffusion.nodes.registry import nodes
from comfymesh.diffusion.sampling.batching import sample_latent
from comfymesh.diffusion.sampling.ksampler import SamplingModel
from comfymesh.diffusion.sampling.samplers import SAMPLER_NAMES as SAMPLER_CHOICES
from comfymesh.diffusion.sampling.schedulers import SCHEDULER_NAMES
from comfymesh.diffusion.sampling.step_reporter import StepReporter
from comfymesh.stage.node import NodeContext


def step_reporter(ctx: NodeContext, sm: SamplingModel) -> StepReporter:
    """Progress, and previews unless the job asked for none, from CUDA events (no per-step GPU wait)."""
    fmt = sm.latent_format
    return StepReporter(ctx.report_progress, ctx.report_preview if ctx.extras.get("previews", True) else None,
                        lambda denoised: latent_rgb_tensor(denoised, fmt), sm.device)


def weights_key(model: ModelHandle) -> Hashable:
    """Same model files, LoRA patches and model sampling ⇔ same denoiser: such calls of other jobs may
    share the loop."""
    return weights_identity(model)


def _sample(ctx: NodeContext, model: ModelHandle, latent_image: dict[str, Any],
            **kwargs: Any) -> tuple[dict[str, Any]]:
    model = expect_handle(ctx, model, HandleKind.MODEL)
    ckpt = checkpoint_of(ctx, model)
    sm = apply_model_sampling(ctx, model, get_model_cache().sampling_model(ckpt, loras_of(ctx, model)))
    kwargs |= bind_controls(ctx, sm, positive=kwargs["positive"], negative=kwargs["negative"])
    reporter = step_reporter(ctx, sm)
    with torch.no_grad():
        out = sample_latent(sm, weights_key(model), job=ctx.job_id, latent=latent_image, on_step=reporter,
                            check_cancelled=ctx.check_cancelled, **kwargs)
    reporter.finish()
    return (out,)


@nodes.define("KSampler", category="sampling", description="Uses the provided model, positive and negative conditioning to denoise the latent image.",
    inputs=[
        Link("model", "MODEL", tooltip="The model used for denoising the input latent."),
        Int("seed", 0, min=0, max=18446744073709551615, control_after_generate=True,
            tooltip="The random seed used for creating the noise."),
        Int("steps", 20, min=1, max=10000, tooltip="The number of steps used in the denoising process."),
        Float("cfg", 8.0, min=0.0, max=100.0, step=0.1, round=0.01,
              tooltip="The Classifier-Free Guidance scale balances creativity and adherence to the prompt. Higher values result in images more closely matching the prompt however too high values will negatively impact quality."),
        Combo("sampler_name", SAMPLER_CHOICES, tooltip="The algorithm used when sampling, this can affect the quality, speed, and style of the generated output."),
        Combo("scheduler", SCHEDULER_NAMES, tooltip="The scheduler controls how noise is gradually removed to form the image."),
        Link("positive", "CONDITIONING", tooltip="The conditioning describing the attributes you want to include in the image."),
        Link("negative", "CONDITIONING", tooltip="The conditioning describing the attributes you want to exclude from the image."),
        Link("latent_image", "LATENT", tooltip="The latent image to denoise."),
        Float("denoise", 1.0, min=0.0, max=1.0, step=0.01,
              tooltip="The amount of denoising applied, lower values will maintain the structure of the initial image allowing for image to image sampling."),
    ],
    outputs=[Output("LATENT")],
    output_tooltips=["The denoised latent."],
)
@node
def ksampler_node(ctx: NodeContext, model: ModelHandle, seed: int, steps: int, cfg: float, sampler_name: str,
                  scheduler: str, positive: list[Any], negative: list[Any], latent_image: dict[str, Any],
                  denoise: float = 1.0) -> tuple[dict[str, Any]]:
    return _sample(ctx, model, latent_image, seed=int(seed), steps=int(steps), cfg=float(cfg),
                   sampler_name=sampler_name, scheduler=scheduler, positive=positive, negative=negative,
                   denoise=float(denoise))


@nodes.define("KSamplerAdvanced", category="sampling", display_name="KSampler (Advanced)",
    inputs=[
        Link("model", "MODEL"),
        Combo("add_noise", ["enable", "disable"]),
        Int("noise_seed", 0, min=0, max=18446744073709551615, control_after_generate=True),
        Int("steps", 20, min=1, max=10000),
        Float("cfg", 8.0, min=0.0, max=100.0, step=0.1, round=0.01),
        Combo("sampler_name", SAMPLER_CHOICES),
        Combo("scheduler", SCHEDULER_NAMES),
        Link("positive", "CONDITIONING"),
        Link("negative", "CONDITIONING"),
        Link("latent_image", "LATENT"),
        Int("start_at_step", 0, min=0, max=10000),
        Int("end_at_step", 10000, min=0, max=10000),
        Combo("return_with_leftover_noise", ["disable", "enable"]),
    ],
    outputs=[Output("LATENT")],
)
@node
def ksampler_advanced(ctx: NodeContext, model: ModelHandle, add_noise: str, noise_seed: int, steps: int, cfg: float,
                      sampler_name: str, scheduler: str, positive: list[Any], negative: list[Any],
                      latent_image: dict[str, Any], start_at_step: int = 0, end_at_step: int = 10000,
                      return_with_leftover_noise: str = "disable") -> tuple[dict[str, Any]]:
    return _sample(ctx, model, latent_image, seed=int(noise_seed), steps=int(steps), cfg=float(cfg),
                   sampler_name=sampler_name, scheduler=scheduler, positive=positive, negative=negative,
                   denoise=1.0, add_noise=add_noise != "disable", start_step=int(start_at_step),
                   last_step=int(end_at_step), force_full_denoise=return_with_leftover_noise != "enable")
