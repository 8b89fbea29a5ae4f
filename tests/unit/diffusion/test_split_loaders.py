"""ComfyUI's split loaders (UNETLoader, CLIPLoader, DualCLIPLoader) on files split from tiny SD1.5, SD2 and SDXL
checkpoints: declarations against ComfyUI 0.8.0's, images equal to the whole checkpoint's, and errors that name
the file and what it holds (CPU)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from comfymesh.contracts import wirejson
from comfymesh.contracts.errors import ModelError
from comfymesh.contracts.handles import checkpoint_named
from comfymesh.diffusion.models.cache import ModelCache, set_model_cache
from comfymesh.diffusion.models.tiny_checkpoint import make_tiny_checkpoint, make_tiny_lora, write_split
from comfymesh.diffusion.nodes import nodes
from comfymesh.stage.node import NodeContext
from comfymesh.v1 import common_pb2

GOLDEN = Path(__file__).parents[2] / "golden" / "split_loaders_object_info.json"
FAMILIES = ("sd15", "sd2v", "sdxl")


def run(ctx: NodeContext, name: str, **inputs: Any) -> Any:
    return nodes.impls[name](ctx, **inputs)


@pytest.fixture(scope="module")
def homes(tmp_path_factory: pytest.TempPathFactory, tokenizer_ready: Path) -> dict[str, Path]:
    """One ComfyUI home per family: models/checkpoints/<family>.safetensors and the same weights split."""
    out = {}
    for family in FAMILIES:
        home = tmp_path_factory.mktemp(family)
        ckpt = make_tiny_checkpoint(home / "models" / "checkpoints" / f"{family}.safetensors", family, seed=0)
        write_split(ckpt, home / "models", family)
        make_tiny_lora(home / "models" / "loras" / "lora.safetensors", ckpt, seed=3)
        out[family] = home
    return out


@pytest.fixture(scope="module")
def cache() -> Iterator[ModelCache]:
    cache = ModelCache(budget_bytes=2 * 2**30, device=torch.device("cpu"))
    set_model_cache(cache)
    yield cache
    set_model_cache(None)


def ctx_for(homes: dict[str, Path], family: str) -> NodeContext:
    return NodeContext(job_id="job", node_id="7", class_type="test", home=homes[family])


def txt2img(ctx: NodeContext, model: Any, clip: Any, vae: Any, *, lora: float = 0.0) -> torch.Tensor:
    if lora:
        model, clip = run(ctx, "LoraLoader", model=model, clip=clip, lora_name="lora.safetensors",
                          strength_model=lora, strength_clip=lora)
    (pos,) = run(ctx, "CLIPTextEncode", text="a (red:1.2) cat", clip=clip)
    (neg,) = run(ctx, "CLIPTextEncode", text="blurry", clip=clip)
    (latent,) = run(ctx, "EmptyLatentImage", width=64, height=48, batch_size=1)
    (out,) = run(ctx, "KSampler", model=model, seed=5, steps=3, cfg=7.0, sampler_name="euler", scheduler="karras",
                 positive=pos, negative=neg, latent_image=latent, denoise=1.0)
    (image,) = run(ctx, "VAEDecode", samples=out, vae=vae)
    result: torch.Tensor = image
    return result


def whole(ctx: NodeContext, family: str) -> tuple[Any, Any, Any]:
    loaded: tuple[Any, Any, Any] = run(ctx, "CheckpointLoaderSimple", ckpt_name=f"{family}.safetensors")
    return loaded


def split(ctx: NodeContext, family: str, weight_dtype: str = "default") -> tuple[Any, Any, Any]:
    (model,) = run(ctx, "UNETLoader", unet_name=f"{family}.safetensors", weight_dtype=weight_dtype)
    if family == "sdxl":
        (clip,) = run(ctx, "DualCLIPLoader", clip_name1="clip_g.safetensors", clip_name2="clip_l.safetensors",
                      type="sdxl")
    else:
        encoder = "clip_l" if family == "sd15" else "clip_h"
        (clip,) = run(ctx, "CLIPLoader", clip_name=f"{encoder}.safetensors", type="stable_diffusion")
    (vae,) = run(ctx, "VAELoader", vae_name=f"{family}.safetensors")
    return model, clip, vae


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()


def test_object_info_equals_comfyui_080() -> None:
    golden = json.loads(GOLDEN.read_text())
    golden.pop("_about")
    assert {name: nodes.schemas[name].object_info() for name in golden} == golden


@pytest.mark.parametrize("family", FAMILIES)
def test_split_files_give_the_checkpoints_image(homes: dict[str, Path], cache: ModelCache, family: str) -> None:
    ctx = ctx_for(homes, family)
    reference = txt2img(ctx, *whole(ctx, family))
    image = txt2img(ctx, *split(ctx, family))
    assert image.shape == (1, 48, 64, 3)
    assert torch.equal(image, reference) or psnr(image, reference) >= 60


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_lora_loader_on_split_model_and_clip(homes: dict[str, Path], cache: ModelCache, family: str) -> None:
    ctx = ctx_for(homes, family)
    reference = txt2img(ctx, *whole(ctx, family), lora=0.8)
    image = txt2img(ctx, *split(ctx, family), lora=0.8)
    assert psnr(image, reference) >= 60
    assert psnr(image, txt2img(ctx, *split(ctx, family))) < 60  # the LoRA did change the image


@pytest.mark.parametrize("weight_dtype", ["fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"])
def test_fp8_weights_run_and_stay_close(homes: dict[str, Path], cache: ModelCache, weight_dtype: str) -> None:
    ctx = ctx_for(homes, "sd15")
    model, clip, vae = split(ctx, "sd15", weight_dtype)
    assert model["weight_dtype"] == weight_dtype
    exact = txt2img(ctx, *split(ctx, "sd15"))
    image = txt2img(ctx, model, clip, vae)
    assert torch.isfinite(image).all()
    assert 15 <= psnr(image, exact) < float("inf")  # rounded weights: close, not equal
    loaded = cache.unet_file(homes["sd15"] / "models" / "diffusion_models" / "sd15.safetensors", weight_dtype)
    storage = torch.float8_e5m2 if weight_dtype == "fp8_e5m2" else torch.float8_e4m3fn
    weight = next(loaded.unet()[0].parameters())
    assert torch.equal(weight, weight.to(storage).to(weight.dtype))  # every weight is an fp8 value


def test_split_handles_name_their_files(homes: dict[str, Path], cache: ModelCache) -> None:
    ctx = ctx_for(homes, "sdxl")
    model, clip, _ = split(ctx, "sdxl")
    assert model["unet_file"] == "sdxl.safetensors" and model["loras"] == []
    assert clip["clip_files"] == ["clip_g.safetensors", "clip_l.safetensors"] and clip["type"] == "sdxl"
    for handle, kind, name in ((model, "MODEL", "sdxl.safetensors"), (clip, "CLIP", "clip_g.safetensors")):
        value = common_pb2.Value(type=kind, json=wirejson.dumps(handle))
        assert checkpoint_named(value) == name
    assert wirejson.dumps(model) == wirejson.dumps(split(ctx, "sdxl")[0])


def test_wrong_files_are_named_with_what_they_hold(homes: dict[str, Path], cache: ModelCache) -> None:
    ctx = ctx_for(homes, "sdxl")
    vae_as_unet = homes["sdxl"] / "models" / "diffusion_models" / "vae_copy.safetensors"
    vae_as_unet.write_bytes((homes["sdxl"] / "models" / "vae" / "sdxl.safetensors").read_bytes())
    with pytest.raises(ModelError, match=r"vae_copy\.safetensors is not a diffusion model \(UNet\): it holds a VAE"):
        run(ctx, "UNETLoader", unet_name="vae_copy.safetensors", weight_dtype="default")
    with pytest.raises(ModelError, match=r"'stable_diffusion' takes CLIP-L .* found clip_g\.safetensors: CLIP-G"):
        run(ctx, "CLIPLoader", clip_name="clip_g.safetensors", type="stable_diffusion")
    with pytest.raises(ModelError, match=r"'sdxl' takes one CLIP-L and one CLIP-G .*clip_l\.safetensors: CLIP-L"):
        run(ctx, "DualCLIPLoader", clip_name1="clip_l.safetensors", clip_name2="clip_l.safetensors", type="sdxl")
    with pytest.raises(ModelError, match=r"sdxl\.safetensors is not a CLIP text encoder: it holds a VAE"):
        ctx_vae = homes["sdxl"] / "models" / "text_encoders" / "sdxl.safetensors"
        ctx_vae.write_bytes((homes["sdxl"] / "models" / "vae" / "sdxl.safetensors").read_bytes())
        run(ctx, "CLIPLoader", clip_name="sdxl.safetensors", type="stable_diffusion")


def test_a_whole_checkpoint_loads_as_a_diffusion_model(homes: dict[str, Path], cache: ModelCache) -> None:
    ctx = ctx_for(homes, "sd15")
    target = homes["sd15"] / "models" / "unet" / "whole.safetensors"  # the unet alias of diffusion_models
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes((homes["sd15"] / "models" / "checkpoints" / "sd15.safetensors").read_bytes())
    (model,) = run(ctx, "UNETLoader", unet_name="whole.safetensors", weight_dtype="default")
    _, clip, vae = split(ctx, "sd15")
    assert torch.equal(txt2img(ctx, model, clip, vae), txt2img(ctx, *split(ctx, "sd15")))


def test_flux2_type_takes_klein_or_dev_encoders(homes: dict[str, Path], cache: ModelCache) -> None:
    # FLUX.2's CLIP type runs Klein's Qwen3 and Dev's Mistral files (tests/unit/diffusion/test_flux2.py); a CLIP-L
    # file is neither
    with pytest.raises(ModelError, match=r"clip_l\.safetensors is not a Qwen3 text encoder .*'flux2'"):
        run(ctx_for(homes, "sdxl"), "CLIPLoader", clip_name="clip_l.safetensors", type="flux2")


@pytest.mark.parametrize(("node", "inputs"), [
    ("CLIPLoader", {"clip_name": "clip_l.safetensors", "type": "ovis"}),
    ("DualCLIPLoader", {"clip_name1": "clip_l.safetensors", "clip_name2": "clip_g.safetensors",
                        "type": "hunyuan_video"}),
])
def test_unsupported_types_say_so(homes: dict[str, Path], cache: ModelCache, node: str, inputs: dict[str, str]) -> None:
    with pytest.raises(ModelError, match=rf"CLIP type '{inputs['type']}' is not supported yet \(model families: "
                                         r"issue 15\)"):
        run(ctx_for(homes, "sdxl"), node, **inputs)
