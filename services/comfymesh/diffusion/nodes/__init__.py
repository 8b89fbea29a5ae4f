"""Node implementations of the diffusion stage: `NODES[class_type](ctx, **inputs) -> tuple`.

MODEL / CLIP / VAE values are small deterministic JSON handles naming files by name and digest; the
process-wide ModelCache turns them into resident weights.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from comfymesh.diffusion.fast import tiers as fast_path
from comfymesh.diffusion.latents import vae_codec
from comfymesh.diffusion.latents.previews import latent_rgb_tensor
from comfymesh.diffusion.models.cache import LoadedCheckpoint, LoraSpec, ModelCache, get_model_cache
from comfymesh.diffusion.models.checkpoint import import_model_code
from comfymesh.diffusion.sampling import batching
from comfymesh.diffusion.text.encode import encode_prompt
from comfymesh.errors import ComfymeshError, ModelError, NodeInputError, ResourceExhaustedError
from comfymesh.logs import log_fields
from comfymesh.stage.node import NodeContext, NodeImpl

Handle = dict[str, Any]
log = logging.getLogger(__name__)
MODEL_EXTENSIONS = (".safetensors", ".sft")
LATENT_UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")


# ---------------------------------------------------------------------------------------------------
# files and handles


def model_dir(ctx: NodeContext, kind: str) -> Path:
    return ctx.home / "models" / kind


def list_model_files(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix in MODEL_EXTENSIONS)


def resolve_file(ctx: NodeContext, kind: str, name: str) -> Path:
    """The file `name` under models/<kind>; NodeInputError naming it and listing what exists."""
    root = model_dir(ctx, kind)
    path = (root / name).resolve()
    if not name or ".." in Path(name).parts or root.resolve() not in path.parents:
        raise NodeInputError(f"invalid {kind} file name {name!r}", node_id=ctx.node_id)
    if not path.is_file():
        existing = list_model_files(root)
        raise NodeInputError(
            f"{kind} file {name!r} not found in {root}; available: {', '.join(existing) or 'none'}",
            node_id=ctx.node_id,
        )
    return path


def _cache() -> ModelCache:
    return get_model_cache()


def _checkpoint(ctx: NodeContext, handle: Handle) -> LoadedCheckpoint:
    ckpt = _cache().get(resolve_file(ctx, "checkpoints", handle["ckpt"]))
    if ckpt.digest != handle["digest"]:
        raise ModelError(f"checkpoint {handle['ckpt']} changed on disk since it was loaded; run the loader again",
                         node_id=ctx.node_id)
    return ckpt


def _loras(ctx: NodeContext, handle: Handle) -> list[LoraSpec]:
    out = []
    for name, digest, strength in handle.get("loras", []):
        path = resolve_file(ctx, "loras", name)
        if _cache().digest(path) != digest:
            raise ModelError(f"LoRA {name} changed on disk since it was loaded", node_id=ctx.node_id)
        out.append((path, float(strength)))
    return out


def _expect(ctx: NodeContext, handle: Any, kind: str) -> Handle:
    if not isinstance(handle, dict) or handle.get("kind") != kind:
        raise NodeInputError(f"expected a {kind.upper()} input, got {type(handle).__name__}", node_id=ctx.node_id)
    return handle


def _node(fn: Callable[..., tuple[Any, ...]]) -> NodeImpl:
    """Give every failure the node id, and classify out-of-memory as retryable elsewhere."""

    @functools.wraps(fn)
    def wrapper(ctx: NodeContext, **inputs: Any) -> tuple[Any, ...]:
        try:
            return fn(ctx, **inputs)
        except ComfymeshError as exc:
            if not exc.node_id:
                exc.node_id = ctx.node_id
            raise
        except torch.cuda.OutOfMemoryError as exc:
            raise ResourceExhaustedError(f"out of GPU memory: {exc}", node_id=ctx.node_id) from exc

    return wrapper


# ---------------------------------------------------------------------------------------------------
# loaders


@_node
def checkpoint_loader_simple(ctx: NodeContext, ckpt_name: str) -> tuple[Handle, Handle, Handle]:
    ckpt = _cache().get(resolve_file(ctx, "checkpoints", ckpt_name))
    base = {"ckpt": ckpt_name, "digest": ckpt.digest}
    return ({"kind": "model", **base, "loras": []},
            {"kind": "clip", **base, "loras": [], "stop_at_clip_layer": None},
            {"kind": "vae", **base})


@_node
def vae_loader(ctx: NodeContext, vae_name: str) -> tuple[Handle]:
    if vae_name in ("pixel_space", "taesd", "taesdxl", "taesd3", "taef1"):
        raise NodeInputError(f"VAE {vae_name!r} is not supported yet", node_id=ctx.node_id)
    digest, _ = _cache().vae_file(resolve_file(ctx, "vae", vae_name))
    return ({"kind": "vae", "file": vae_name, "digest": digest},)


@_node
def lora_loader(ctx: NodeContext, model: Handle, clip: Handle, lora_name: str, strength_model: float,
                strength_clip: float) -> tuple[Handle, Handle]:
    model = _expect(ctx, model, "model")
    clip = _expect(ctx, clip, "clip")
    path = resolve_file(ctx, "loras", lora_name)
    _cache().check_lora(_checkpoint(ctx, model), path)
    digest = _cache().digest(path)
    new_model = {**model, "loras": [*model["loras"], [lora_name, digest, float(strength_model)]]}
    new_clip = {**clip, "loras": [*clip["loras"], [lora_name, digest, float(strength_clip)]]}
    return new_model, new_clip


@_node
def clip_set_last_layer(ctx: NodeContext, clip: Handle, stop_at_clip_layer: int) -> tuple[Handle]:
    clip = _expect(ctx, clip, "clip")
    if not -24 <= int(stop_at_clip_layer) <= -1:
        raise NodeInputError(f"stop_at_clip_layer must be between -24 and -1, got {stop_at_clip_layer}",
                             node_id=ctx.node_id)
    return ({**clip, "stop_at_clip_layer": int(stop_at_clip_layer)},)


# ---------------------------------------------------------------------------------------------------
# conditioning


@_node
def clip_text_encode(ctx: NodeContext, text: str, clip: Handle) -> tuple[list[Any]]:
    clip = _expect(ctx, clip, "clip")
    ckpt = _checkpoint(ctx, clip)
    encoders = _cache().text_encoders(ckpt, _loras(ctx, clip))
    cond, pooled = encode_prompt(encoders, text, clip.get("stop_at_clip_layer"))
    return ([[cond, {"pooled_output": pooled}]],)


@_node
def conditioning_combine(ctx: NodeContext, conditioning_1: list[Any], conditioning_2: list[Any]) -> tuple[list[Any]]:
    return (list(conditioning_1) + list(conditioning_2),)


# ---------------------------------------------------------------------------------------------------
# latents


@_node
def empty_latent_image(ctx: NodeContext, width: int, height: int, batch_size: int = 1) -> tuple[dict[str, Any]]:
    return ({"samples": torch.zeros([batch_size, 4, height // 8, width // 8], dtype=torch.float32)},)


def _upscale(samples: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    if method not in LATENT_UPSCALE_METHODS:
        raise NodeInputError(f"unknown upscale_method {method!r}")
    if method == "bislerp":
        raise NodeInputError("upscale_method 'bislerp' is not implemented yet")
    s = samples
    if crop == "center":
        old_w, old_h = samples.shape[-1], samples.shape[-2]
        old_aspect, new_aspect = old_w / old_h, width / height
        x = y = 0
        if old_aspect > new_aspect:
            x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
        s = samples.narrow(-2, y, old_h - y * 2).narrow(-1, x, old_w - x * 2)
    return F.interpolate(s, size=(height, width), mode=method)


@_node
def latent_upscale(ctx: NodeContext, samples: dict[str, Any], upscale_method: str, width: int, height: int,
                   crop: str = "disabled") -> tuple[dict[str, Any]]:
    z = torch.as_tensor(samples["samples"]).float()
    if width == 0 and height == 0:
        return ({**samples, "samples": z},)
    if width == 0:
        height = max(64, height)
        width = max(64, round(z.shape[-1] * height / z.shape[-2]))
    elif height == 0:
        width = max(64, width)
        height = max(64, round(z.shape[-2] * width / z.shape[-1]))
    else:
        width, height = max(64, width), max(64, height)
    return ({**samples, "samples": _upscale(z, width // 8, height // 8, upscale_method, crop)},)


@_node
def latent_upscale_by(ctx: NodeContext, samples: dict[str, Any], upscale_method: str,
                      scale_by: float) -> tuple[dict[str, Any]]:
    z = torch.as_tensor(samples["samples"]).float()
    width, height = round(z.shape[-1] * scale_by), round(z.shape[-2] * scale_by)
    return ({**samples, "samples": _upscale(z, width, height, upscale_method, "disabled")},)


# ---------------------------------------------------------------------------------------------------
# sampling


def _sample(ctx: NodeContext, model: Handle, latent_image: dict[str, Any], **kwargs: Any) -> tuple[dict[str, Any]]:
    model = _expect(ctx, model, "model")
    ckpt = _checkpoint(ctx, model)
    sm = _cache().sampling_model(ckpt, _loras(ctx, model))
    fmt = sm.latent_format
    want_previews = ctx.extras.get("previews", True)
    # progress and previews from CUDA events: the step loop never waits on the GPU for them
    reporter = fast_path.StepReporter(ctx.report_progress, ctx.report_preview if want_previews else None,
                                      lambda denoised: latent_rgb_tensor(denoised, fmt), sm.device)
    # same weights ⇔ same checkpoint digest and LoRA patches: such calls of other jobs may share the loop
    model_key = (model["digest"], tuple((digest, float(strength)) for _, digest, strength in model["loras"]))
    with torch.no_grad():
        out = batching.sample_latent(sm, model_key, job=ctx.job_id, latent=latent_image, on_step=reporter,
                                     check_cancelled=ctx.check_cancelled, **kwargs)
    reporter.finish()
    return (out,)


@_node
def ksampler_node(ctx: NodeContext, model: Handle, seed: int, steps: int, cfg: float, sampler_name: str,
                  scheduler: str, positive: list[Any], negative: list[Any], latent_image: dict[str, Any],
                  denoise: float = 1.0) -> tuple[dict[str, Any]]:
    return _sample(ctx, model, latent_image, seed=int(seed), steps=int(steps), cfg=float(cfg),
                   sampler_name=sampler_name, scheduler=scheduler, positive=positive, negative=negative,
                   denoise=float(denoise))


@_node
def ksampler_advanced(ctx: NodeContext, model: Handle, add_noise: str, noise_seed: int, steps: int, cfg: float,
                      sampler_name: str, scheduler: str, positive: list[Any], negative: list[Any],
                      latent_image: dict[str, Any], start_at_step: int = 0, end_at_step: int = 10000,
                      return_with_leftover_noise: str = "disable") -> tuple[dict[str, Any]]:
    return _sample(ctx, model, latent_image, seed=int(noise_seed), steps=int(steps), cfg=float(cfg),
                   sampler_name=sampler_name, scheduler=scheduler, positive=positive, negative=negative,
                   denoise=1.0, add_noise=add_noise != "disable", start_step=int(start_at_step),
                   last_step=int(end_at_step), force_full_denoise=return_with_leftover_noise != "enable")


# ---------------------------------------------------------------------------------------------------
# VAE


def _vae(ctx: NodeContext, handle: Handle) -> tuple[torch.nn.Module, fast_path.FastDecoder | None]:
    """The VAE of a handle and, for a checkpoint's VAE on the fast path, its compiled decoder."""
    handle = _expect(ctx, handle, "vae")
    if "file" in handle:
        digest, file_vae = _cache().vae_file(resolve_file(ctx, "vae", handle["file"]))
        if digest != handle["digest"]:
            raise ModelError(f"VAE {handle['file']} changed on disk since it was loaded", node_id=ctx.node_id)
        return file_vae, None
    ckpt = _checkpoint(ctx, handle)
    return ckpt.parts.vae, _cache().decoder(ckpt)


@_node
def vae_decode(ctx: NodeContext, samples: dict[str, Any], vae: Handle) -> tuple[torch.Tensor]:
    module, decoder = _vae(ctx, vae)
    return (vae_codec.decode(module, torch.as_tensor(samples["samples"]), decoder),)


@_node
def vae_encode(ctx: NodeContext, pixels: Any, vae: Handle) -> tuple[dict[str, Any]]:
    return ({"samples": vae_codec.encode(_vae(ctx, vae)[0], torch.as_tensor(pixels))},)


def start_warmup(home: Path) -> None:
    """Stage start on a GPU: import the model code before serving (so the first request pays only for
    its model's load, like a started ComfyUI), point the compile caches at <home>, and build the buckets
    of the warm-up manifest ($COMFYMESH_WARMUP_MANIFEST) in the background. CPU stages (tests, laptops)
    start at once and import on first use."""
    cache = _cache()
    if not fast_path.fast_enabled(cache.device):
        return
    log.info("model code imported", extra=log_fields(seconds=round(import_model_code(), 2)))
    fast_path.compile_cache_dir(home)
    if not os.environ.get(fast_path.MANIFEST_ENV):
        return

    def load(name: str) -> fast_path.WarmTarget:
        ckpt = cache.get(home / "models" / "checkpoints" / name)
        vae: Any = ckpt.parts.vae
        return fast_path.WarmTarget(cache.sampling_model(ckpt), cache.decoder(ckpt), vae.config.latent_channels)

    def run() -> None:
        started = fast_path.warmup_from_manifest(load)
        log.info("warm-up manifest: building %s", ", ".join(started) or "nothing")

    import threading

    threading.Thread(target=run, name="comfymesh-warmup", daemon=True).start()


NODES: dict[str, NodeImpl] = {
    "CheckpointLoaderSimple": checkpoint_loader_simple,
    "VAELoader": vae_loader,
    "LoraLoader": lora_loader,
    "CLIPSetLastLayer": clip_set_last_layer,
    "CLIPTextEncode": clip_text_encode,
    "ConditioningCombine": conditioning_combine,
    "EmptyLatentImage": empty_latent_image,
    "LatentUpscale": latent_upscale,
    "LatentUpscaleBy": latent_upscale_by,
    "KSampler": ksampler_node,
    "KSamplerAdvanced": ksampler_advanced,
    "VAEDecode": vae_decode,
    "VAEEncode": vae_encode,
}

__all__ = ["NODES", "list_model_files"]
