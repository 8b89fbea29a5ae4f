"""End-to-end through the declared nodes (tiny models): loaders, encode, sampling semantics, VAE, errors, cancel."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from comfymesh.config import Settings
from comfymesh.contracts.errors import InterruptedError_, ModelError, NodeInputError, ResourceExhaustedError
from comfymesh.diffusion.models.cache import ModelCache
from comfymesh.diffusion.nodes import nodes
from comfymesh.stage.node import NodeContext


def txt2img(ctx: NodeContext, ckpt: str, *, seed: int = 1, sampler: str = "euler", steps: int = 3,
            width: int = 64, height: int = 64, batch: int = 1, **extra: Any) -> torch.Tensor:
    model, clip, vae = nodes.impls["CheckpointLoaderSimple"](ctx, ckpt_name=ckpt)
    (pos,) = nodes.impls["CLIPTextEncode"](ctx, text="a (red:1.2) cat", clip=clip)
    (neg,) = nodes.impls["CLIPTextEncode"](ctx, text="blurry", clip=clip)
    (latent,) = nodes.impls["EmptyLatentImage"](ctx, width=width, height=height, batch_size=batch)
    (out,) = nodes.impls["KSampler"](ctx, model=model, seed=seed, steps=steps, cfg=7.0, sampler_name=sampler,
                               scheduler="karras", positive=pos, negative=neg, latent_image=latent,
                               denoise=1.0, **extra)
    (image,) = nodes.impls["VAEDecode"](ctx, samples=out, vae=vae)
    return image


@pytest.mark.parametrize("ckpt", ["sd15.safetensors", "sdxl.safetensors", "sd2v.safetensors"])
def test_txt2img_shape_and_determinism(node_ctx: NodeContext, ckpt: str) -> None:
    first = txt2img(node_ctx, ckpt, width=64, height=48, batch=2)
    assert first.shape == (2, 48, 64, 3) and first.dtype == torch.float32
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0
    assert torch.equal(first, txt2img(node_ctx, ckpt, width=64, height=48, batch=2))
    assert not torch.equal(first, txt2img(node_ctx, ckpt, seed=2, width=64, height=48, batch=2))


def test_handles_are_deterministic_json(node_ctx: NodeContext) -> None:
    a = nodes.impls["CheckpointLoaderSimple"](node_ctx, ckpt_name="sd15.safetensors")
    b = nodes.impls["CheckpointLoaderSimple"](node_ctx, ckpt_name="sd15.safetensors")
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    model, clip, vae = a
    assert model["kind"] == "model" and clip["stop_at_clip_layer"] is None and vae["kind"] == "vae"
    (clip2,) = nodes.impls["CLIPSetLastLayer"](node_ctx, clip=clip, stop_at_clip_layer=-2)
    assert clip2["stop_at_clip_layer"] == -2 and clip["stop_at_clip_layer"] is None


def test_progress_and_previews(tiny_home: Path, model_cache: ModelCache) -> None:
    progress: list[tuple[int, int]] = []
    previews: list[bytes] = []
    ctx = NodeContext(job_id="j", node_id="3", class_type="KSampler", home=tiny_home,
                      report_progress=lambda v, m: progress.append((v, m)),
                      report_preview=lambda data, fmt: previews.append(data))
    txt2img(ctx, "sd15.safetensors", steps=4)
    assert progress == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert len(previews) == 4
    assert Image.open(io.BytesIO(previews[0])).size == (8, 8)


def test_cancel_stops_within_one_step(tiny_home: Path, model_cache: ModelCache) -> None:
    progress: list[int] = []
    ctx = NodeContext(job_id="j", node_id="3", class_type="KSampler", home=tiny_home,
                      report_progress=lambda v, m: progress.append(v), is_cancelled=lambda: len(progress) >= 2)
    with pytest.raises(InterruptedError_) as info:
        txt2img(ctx, "sd15.safetensors", steps=10, sampler="heun")
    assert progress == [1, 2]
    assert info.value.node_id == "3"


def test_oom_fault_switch(node_ctx: NodeContext, configure: Callable[..., Settings]) -> None:
    configure(test_fault_oom="1")
    with pytest.raises(ResourceExhaustedError, match="COMFYMESH_TEST_FAULT_OOM") as info:
        txt2img(node_ctx, "sd15.safetensors")
    assert info.value.non_retryable is False and info.value.node_id == "7"


def test_missing_checkpoint_lists_existing(node_ctx: NodeContext) -> None:
    with pytest.raises(NodeInputError, match=r"'nope.safetensors' not found.*sd15.safetensors") as info:
        nodes.impls["CheckpointLoaderSimple"](node_ctx, ckpt_name="nope.safetensors")
    assert info.value.node_id == "7"
    with pytest.raises(NodeInputError, match=r"not found in models/checkpoints;"):
        nodes.impls["CheckpointLoaderSimple"](node_ctx, ckpt_name="../x.safetensors")
    with pytest.raises(NodeInputError, match=r"only \.safetensors and \.sft files load"):
        nodes.impls["CheckpointLoaderSimple"](node_ctx, ckpt_name="x.ckpt")


def test_advanced_split_equals_single_run(node_ctx: NodeContext) -> None:
    model, clip, _ = nodes.impls["CheckpointLoaderSimple"](node_ctx, ckpt_name="sd15.safetensors")
    (pos,) = nodes.impls["CLIPTextEncode"](node_ctx, text="a cat", clip=clip)
    (neg,) = nodes.impls["CLIPTextEncode"](node_ctx, text="", clip=clip)
    (latent,) = nodes.impls["EmptyLatentImage"](node_ctx, width=64, height=64, batch_size=1)
    common = {"model": model, "steps": 6, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
              "positive": pos, "negative": neg}
    (full,) = nodes.impls["KSampler"](node_ctx, seed=9, latent_image=latent, denoise=1.0, **common)
    (half,) = nodes.impls["KSamplerAdvanced"](node_ctx, add_noise="enable", noise_seed=9, latent_image=latent,
                                        start_at_step=0, end_at_step=3, return_with_leftover_noise="enable",
                                        **common)
    (rest,) = nodes.impls["KSamplerAdvanced"](node_ctx, add_noise="disable", noise_seed=0, latent_image=half,
                                        start_at_step=3, end_at_step=10000, return_with_leftover_noise="disable",
                                        **common)
    assert torch.allclose(full["samples"], rest["samples"], atol=1e-4)


def test_denoise_zero_returns_input(node_ctx: NodeContext) -> None:
    model, clip, _ = nodes.impls["CheckpointLoaderSimple"](node_ctx, ckpt_name="sd15.safetensors")
    (pos,) = nodes.impls["CLIPTextEncode"](node_ctx, text="a cat", clip=clip)
    latent = {"samples": torch.randn(1, 4, 8, 8)}
    (out,) = nodes.impls["KSampler"](node_ctx, model=model, seed=0, steps=3, cfg=1.0, sampler_name="euler",
                               scheduler="normal", positive=pos, negative=pos, latent_image=latent, denoise=0.0)
    assert torch.equal(out["samples"], latent["samples"])


def test_img2img_combine_and_upscale(node_ctx: NodeContext) -> None:
    model, clip, vae = nodes.impls["CheckpointLoaderSimple"](node_ctx, ckpt_name="sd15.safetensors")
    pixels = torch.rand(1, 70, 66, 3).numpy()  # numpy, as from the artifact store; cropped to 64×64
    (latent,) = nodes.impls["VAEEncode"](node_ctx, pixels=pixels, vae=vae)
    assert latent["samples"].shape == (1, 4, 8, 8)
    (big,) = nodes.impls["LatentUpscaleBy"](node_ctx, samples=latent, upscale_method="bilinear", scale_by=1.5)
    assert big["samples"].shape == (1, 4, 12, 12)
    (wide,) = nodes.impls["LatentUpscale"](node_ctx, samples=latent, upscale_method="nearest-exact", width=128,
                                     height=64, crop="center")
    assert wide["samples"].shape == (1, 4, 8, 16)
    (a,) = nodes.impls["CLIPTextEncode"](node_ctx, text="a cat", clip=clip)
    (b,) = nodes.impls["CLIPTextEncode"](node_ctx, text=" ".join(["dog"] * 90), clip=clip)
    (both,) = nodes.impls["ConditioningCombine"](node_ctx, conditioning_1=a, conditioning_2=b)
    assert len(both) == 2
    (out,) = nodes.impls["KSampler"](node_ctx, model=model, seed=3, steps=2, cfg=3.0, sampler_name="dpmpp_2m",
                               scheduler="normal", positive=both, negative=a, latent_image=big, denoise=0.6)
    assert out["samples"].shape == (1, 4, 12, 12)


def test_conditioning_from_other_family_is_rejected(node_ctx: NodeContext) -> None:
    model, _, _ = nodes.impls["CheckpointLoaderSimple"](node_ctx, ckpt_name="sdxl.safetensors")
    _, clip15, _ = nodes.impls["CheckpointLoaderSimple"](node_ctx, ckpt_name="sd15.safetensors")
    (pos,) = nodes.impls["CLIPTextEncode"](node_ctx, text="a cat", clip=clip15)
    (latent,) = nodes.impls["EmptyLatentImage"](node_ctx, width=64, height=64, batch_size=1)
    with pytest.raises(NodeInputError, match="width 32 but the sdxl model expects 64"):
        nodes.impls["KSampler"](node_ctx, model=model, seed=0, steps=2, cfg=5.0, sampler_name="euler",
                          scheduler="normal", positive=pos, negative=pos, latent_image=latent, denoise=1.0)


def test_an_unknown_sampler_is_named_with_the_choices(node_ctx: NodeContext) -> None:
    # all 44 of ComfyUI 0.8.0's samplers run; a name outside them is refused, listing them
    with pytest.raises(NodeInputError, match="'dpm_faster' is unknown: expected one of euler, euler_cfg_pp"):
        txt2img(node_ctx, "sd15.safetensors", sampler="dpm_faster")


def test_changed_file_is_detected(tmp_path: Path, model_cache: ModelCache) -> None:
    from comfymesh.diffusion.models.tiny_checkpoint import make_tiny_checkpoint

    ctx = NodeContext(job_id="j", node_id="1", class_type="x", home=tmp_path)
    path = make_tiny_checkpoint(tmp_path / "models" / "checkpoints" / "m.safetensors", "sd15", seed=1)
    _, clip, _ = nodes.impls["CheckpointLoaderSimple"](ctx, ckpt_name="m.safetensors")
    make_tiny_checkpoint(path, "sd15", seed=2)
    changed = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(ModelError, match=f"changed on disk.*expected sha256 {clip['digest']}, got {changed}"):
        nodes.impls["CLIPTextEncode"](ctx, text="x", clip=clip)
