"""KSampler / KSamplerAdvanced semantics: schedule, initial noise and start point, conditioning, loop."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from comfymesh.config import get_settings
from comfymesh.config.testing import sampling_out_of_memory
from comfymesh.contracts.errors import NodeInputError, ResourceExhaustedError
from comfymesh.diffusion.latents.formats import LatentFormat
from comfymesh.diffusion.models.unclip import sdxl_pooled
from comfymesh.diffusion.sampling.concat import concat_kind, with_concat
from comfymesh.diffusion.sampling.differential import MaskFn, differential_mask_fn
from comfymesh.diffusion.sampling.flow_sampling import inverse_noise_scaling, noise_scaling
from comfymesh.diffusion.sampling.guidance import CondEntry, GuidedDenoiser, MaskedDenoiser, ResidualUNetFn, UNetFn
from comfymesh.diffusion.sampling.model_sampling import ModelSampling
from comfymesh.diffusion.sampling.noise import initial_noise
from comfymesh.diffusion.sampling.post_cfg import PostCfg
from comfymesh.diffusion.sampling.regions import add_opposite_areas, region_of
from comfymesh.diffusion.sampling.samplers import (
    CFG_PP_SAMPLERS,
    FLOW_SAMPLERS,
    SAMPLER_NAMES,
    SAMPLERS,
    Denoiser,
    Sampler,
    SamplerEnv,
)
from comfymesh.diffusion.sampling.schedulers import ksampler_sigmas

StepHook = Callable[[int, int, torch.Tensor], None]
"""(step index, total steps, D_i in the scaled latent space) after each step's first evaluation."""


@dataclass
class SamplingModel:
    """What sampling needs of a loaded (possibly LoRA-patched) model."""

    unet: UNetFn
    sampling: ModelSampling
    prediction: str  # "eps", "v" or "flow" (CONST: x0 = x − σ·out, x = σ·noise + (1 − σ)·x0)
    latent_format: LatentFormat
    family: str
    context_dim: int
    adm: int | None
    device: torch.device
    dtype: torch.dtype
    post_cfg: tuple[PostCfg, ...] = ()  # post-CFG patches of the MODEL handle (CFGNorm), in order
    in_channels: int = 4  # the UNet's: 9 (inpainting) and 8 (instruct-pix2pix) also take concat channels
    mask_strength: float | None = None  # DifferentialDiffusion's strength (None: the noise mask as it is)
    residual_unet: ResidualUNetFn | None = None  # the eager UNet taking ControlNet residuals
    # caption tokens join the image's in one sequence (Z-Image): contexts of other lengths never share a call
    joint_context: bool = False
    # y is the conditioning's pooled output as it is (SD3's CLIP-L ‖ CLIP-G), not SDXL's pooled ‖ size embeddings
    pooled_y: bool = False
    # a family's own y from an entry's pooled output (None if it has none) and extras (FLUX: pooled ‖ guidance)
    make_y: Callable[[Any, dict[str, Any]], torch.Tensor] | None = None
    # a family's per-entry model inputs from the entry's extras (FLUX Kontext's reference latents), or None
    entry_inputs: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None
    # an MMDiT whose call (`unet`) takes per-block ControlNet residuals as `residuals=`: its transformer, whose
    # patch embedder SD3.5 ControlNets share; None for the other models
    control_transformer: Any = None


def size_embedding(value: float, width: int = 256) -> torch.Tensor:
    """Cos-first sinusoid of one size number (SDXL's ADM conditioning), float32 [width]."""
    half = width // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(0, half, dtype=torch.float32) / half)
    args = torch.tensor([float(value)], dtype=torch.float32)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)[0]


def sdxl_y(pooled: torch.Tensor, extras: dict[str, Any], latent_hw: tuple[int, int]) -> torch.Tensor:
    """pooled ‖ e(height) ‖ e(width) ‖ e(crop_h) ‖ e(crop_w) ‖ e(target_height) ‖ e(target_width)."""
    height = extras.get("height") or latent_hw[0] * 8
    width = extras.get("width") or latent_hw[1] * 8
    values = [height, width, extras.get("crop_h", 0), extras.get("crop_w", 0),
              extras.get("target_height", height), extras.get("target_width", width)]
    sizes = torch.cat([size_embedding(v) for v in values])
    return torch.cat([pooled.float().reshape(1, -1), sizes[None]], dim=1)


def cond_entries(conditioning: Sequence[Any], model: SamplingModel, latent_hw: tuple[int, int],
                 which: str, seed: int = 0) -> list[CondEntry]:
    """CONDITIONING values (lists of [context, extras]) as UNet-ready entries on the model's device; `seed`
    (the sampler's) draws the noise of unCLIP image embeds (see models.unclip)."""
    if not conditioning:
        raise NodeInputError(f"{which} conditioning is empty")
    out = []
    for item in conditioning:
        context = torch.as_tensor(item[0]).float()
        extras = dict(item[1]) if len(item) > 1 and item[1] else {}
        if context.ndim != 3 or context.shape[-1] != model.context_dim:
            raise NodeInputError(
                f"{which} conditioning has width {context.shape[-1]} but the {model.family} model expects "
                f"{model.context_dim}: was it encoded with another checkpoint's CLIP?"
            )
        y = None
        if model.make_y is not None:
            y = model.make_y(extras.get("pooled_output"), extras).to(model.device)
        elif model.adm is not None:
            pooled = sdxl_pooled(extras, seed)
            if pooled is None:
                raise NodeInputError(f"{which} conditioning has no pooled output, which {model.family} needs")
            pooled = torch.as_tensor(pooled).float().reshape(1, -1)
            y = pooled if model.pooled_y else sdxl_y(pooled, extras, latent_hw)
            if y.shape[1] != model.adm:
                raise NodeInputError(f"{which} conditioning gives a {y.shape[1]}-wide ADM vector, "
                                     f"the model expects {model.adm}")
            y = y.to(model.device)
        control = extras.get("control")
        if control is not None and not callable(control):
            raise NodeInputError(f"{which} conditioning carries a ControlNet that was not bound to the model")
        region = region_of(extras, model.sampling, latent_hw, which, model.device)
        inputs = model.entry_inputs(extras) if model.entry_inputs is not None else None
        out.append(CondEntry(context.to(model.device), y, region=region, control=control, model_inputs=inputs))
    return out


def match_areas(positive: list[CondEntry], negative: list[CondEntry]) -> None:
    """Give each area of one side an entry of the same area on the other (ComfyUI's opposite areas)."""
    add_opposite_areas([positive, negative], lambda e: e.region,
                       lambda e, donor: dataclasses.replace(e, context=donor.context, y=donor.y, concat=donor.concat))


def _check_fault() -> None:
    if sampling_out_of_memory(get_settings()):
        raise ResourceExhaustedError("CUDA out of memory (injected by COMFYMESH_TEST_FAULT_OOM)")


@dataclass
class PreparedSample:
    """One KSampler call made ready to sample: everything per job is here, so calls can be batched."""

    model: SamplingModel
    sampler_name: str
    sampler: Sampler
    sigmas: torch.Tensor  # CPU float32, n+1 values
    seed: int
    cfg: float
    positive: list[CondEntry]
    negative: list[CondEntry]
    x: torch.Tensor  # the start point, on the device
    scaled: torch.Tensor  # process_in(latent), on the device
    noise: torch.Tensor  # the initial noise, on the device
    mask: torch.Tensor | None  # the prepared noise_mask, on the device
    latent: dict[str, Any]

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])

    @property
    def batchable(self) -> bool:
        """Whether other jobs' calls may share its loop: the cross-job batcher knows neither regions nor
        ControlNets nor post-CFG patches."""
        return not self.model.post_cfg and not self.model.joint_context and not any(e.region is not None or e.control is not None for e in (*self.positive, *self.negative))


def prepare_sample(model: SamplingModel, *, seed: int, steps: int, cfg: float, sampler_name: str,
                   scheduler: str, positive: Sequence[Any], negative: Sequence[Any], latent: dict[str, Any],
                   denoise: float = 1.0, add_noise: bool = True, start_step: int | None = None,
                   last_step: int | None = None, force_full_denoise: bool = False,
                   ) -> PreparedSample | dict[str, Any]:
    """Schedule, initial noise, start point and conditioning of one call; a LATENT when nothing samples."""
    sigmas = ksampler_sigmas(model.sampling, scheduler, steps, sampler_name, denoise,
                             start_step, last_step, force_full_denoise)
    return prepare_with_sigmas(model, torch.zeros(0) if sigmas is None else sigmas, seed=seed, cfg=cfg,
                               sampler_name=sampler_name, positive=positive, negative=negative, latent=latent,
                               add_noise=add_noise)


def prepare_with_sigmas(model: SamplingModel, sigmas: torch.Tensor, *, seed: int, cfg: float, sampler_name: str,
                        positive: Sequence[Any], negative: Sequence[Any] | None, latent: dict[str, Any],
                        add_noise: bool = True) -> PreparedSample | dict[str, Any]:
    """One call on a given schedule (CPU float32); no negative (None) for guidance by the positive alone."""
    _check_fault()
    sampler = SAMPLERS.get(sampler_name)
    if sampler is None:
        raise NodeInputError(f"sampler {sampler_name!r} is unknown: expected one of {', '.join(SAMPLER_NAMES)}")
    if model.prediction == "flow":
        sampler = FLOW_SAMPLERS.get(sampler_name, sampler)
    samples = torch.as_tensor(latent["samples"]).float()
    channels = model.latent_format.channels
    if samples.ndim == 4 and samples.shape[1] != channels and not samples.any():
        # an empty latent made for another family (EmptySD3LatentImage's 16 channels): as ComfyUI does, an
        # all-zero latent takes the model's channel count
        samples = samples.new_zeros(samples.shape[0], channels, *samples.shape[2:])
    if len(sigmas) == 0:
        return {**latent, "samples": samples}
    batch_index = latent.get("batch_index")
    noise = (initial_noise(samples, seed, list(batch_index) if batch_index is not None else None)
             if add_noise else torch.zeros_like(samples))
    hw = (samples.shape[-2], samples.shape[-1])  # Qwen-Image's latents are 5-D: [B, C, T, h, w]
    pos = cond_entries(positive, model, hw, "positive", seed)
    neg = [] if negative is None else cond_entries(negative, model, hw, "negative", seed)
    scaled = model.latent_format.process_in(samples).to(model.device)
    noise = noise.to(model.device)
    mask = None
    if latent.get("noise_mask") is not None:
        mask = MaskedDenoiser.prepare_mask(torch.as_tensor(latent["noise_mask"]), scaled.shape, model.device)
    kind = concat_kind(model.in_channels, channels, model.family)
    pos = with_concat(pos, positive, kind, model.latent_format, model.family, scaled, mask)
    if negative is not None:
        neg = with_concat(neg, negative, kind, model.latent_format, model.family, scaled, mask)
    match_areas(pos, neg)
    sigma0, sigma_max = float(sigmas[0]), float(model.sampling.sigma_max)
    if model.prediction == "flow":
        x = noise_scaling(sigmas[0].to(model.device), noise, scaled)
    elif sigma0 > sigma_max or math.isclose(sigma0, sigma_max, rel_tol=1e-5):
        x = noise * torch.sqrt(1.0 + sigmas[0] ** 2.0).to(model.device) + scaled
    else:
        x = noise * sigmas[0].to(model.device) + scaled
    return PreparedSample(model, sampler_name, sampler, sigmas, seed, cfg, pos, neg, x, scaled, noise, mask, latent)


def mask_fn(prep: PreparedSample) -> MaskFn | None:
    """The per-evaluation noise mask of a DifferentialDiffusion-patched model, else None."""
    strength = prep.model.mask_strength
    return None if strength is None else differential_mask_fn(prep.model.sampling, prep.sigmas, strength)


def finish_sample(prep: PreparedSample, out: torch.Tensor) -> dict[str, Any]:
    """The node's LATENT from the sampler's output rows of this call."""
    if prep.model.prediction == "flow" and float(prep.sigmas[-1]) > 0.0:
        out = inverse_noise_scaling(prep.sigmas[-1].to(out.device), out)  # stopped early: leftover noise
    result = prep.model.latent_format.process_out(out).float().cpu()
    return {**prep.latent, "samples": result}


def sampler_env(prep: PreparedSample, callback: Callable[[int, torch.Tensor, torch.Tensor], None]) -> SamplerEnv:
    return SamplerEnv(seed=prep.seed, callback=callback, flow=prep.model.prediction == "flow",
                      model_sampling=prep.model.sampling)


def run_prepared(prep: PreparedSample, on_step: StepHook | None = None,
                 check_cancelled: Callable[[], None] | None = None, guide: Denoiser | None = None) -> dict[str, Any]:
    """Sample one prepared call on its own; `guide` replaces CFG on the call's conditioning when given."""
    model = prep.model
    denoiser: Denoiser = guide or GuidedDenoiser(
        model.unet, model.sampling, model.prediction, prep.positive, prep.negative, prep.cfg, model.dtype,
        before_eval=check_cancelled)
    if isinstance(denoiser, GuidedDenoiser):
        denoiser.post_cfg = model.post_cfg
        denoiser.tile_context = not model.joint_context
        denoiser.keep_uncond = prep.sampler_name in CFG_PP_SAMPLERS
    if prep.mask is not None:
        denoiser = MaskedDenoiser(denoiser, prep.mask, prep.scaled, prep.noise, mask_fn(prep))
        denoiser.flow = model.prediction == "flow"
    total = len(prep.sigmas) - 1

    def step(i: int, denoised: torch.Tensor, _x: torch.Tensor) -> None:
        if on_step is not None:
            on_step(i, total, denoised)
        if check_cancelled is not None:
            check_cancelled()

    try:
        out = prep.sampler(denoiser, prep.x, prep.sigmas, sampler_env(prep, step))
    except torch.cuda.OutOfMemoryError as exc:
        raise ResourceExhaustedError(f"out of GPU memory while sampling: {exc}") from exc
    return finish_sample(prep, out)


def sample_latent(model: SamplingModel, *, seed: int, steps: int, cfg: float, sampler_name: str,
                  scheduler: str, positive: Sequence[Any], negative: Sequence[Any], latent: dict[str, Any],
                  denoise: float = 1.0, add_noise: bool = True, start_step: int | None = None,
                  last_step: int | None = None, force_full_denoise: bool = False,
                  on_step: StepHook | None = None, check_cancelled: Callable[[], None] | None = None,
                  ) -> dict[str, Any]:
    """Run one KSampler; returns a copy of `latent` with new (unscaled, float32, CPU) samples."""
    prep = prepare_sample(model, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler,
                          positive=positive, negative=negative, latent=latent, denoise=denoise,
                          add_noise=add_noise, start_step=start_step, last_step=last_step,
                          force_full_denoise=force_full_denoise)
    if isinstance(prep, dict):
        return prep
    return run_prepared(prep, on_step, check_cancelled)
