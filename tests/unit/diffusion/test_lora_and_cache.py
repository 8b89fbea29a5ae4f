"""LoRA patches (never mutating the cached base) and the model cache's bookkeeping."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfymesh.contracts.errors import NodeInputError
from comfymesh.diffusion.models.cache import ModelCache
from comfymesh.diffusion.models.tiny_checkpoint import make_tiny_checkpoint
from comfymesh.diffusion.nodes import nodes
from comfymesh.stage.node import NodeContext


def _sample(ctx: NodeContext, model: dict, clip: dict) -> torch.Tensor:
    (pos,) = nodes.impls["CLIPTextEncode"](ctx, text="a cat", clip=clip)
    (latent,) = nodes.impls["EmptyLatentImage"](ctx, width=64, height=64, batch_size=1)
    (out,) = nodes.impls["KSampler"](ctx, model=model, seed=4, steps=2, cfg=1.0, sampler_name="euler",
                               scheduler="normal", positive=pos, negative=pos, latent_image=latent, denoise=1.0)
    return out["samples"]


@pytest.mark.parametrize(("ckpt", "lora"), [("sd15.safetensors", "tiny_sd15.safetensors"),
                                            ("sdxl.safetensors", "tiny_sdxl.safetensors")])
def test_lora_changes_output_without_touching_base(node_ctx: NodeContext, model_cache: ModelCache,
                                                   ckpt: str, lora: str) -> None:
    model, clip, _ = nodes.impls["CheckpointLoaderSimple"](node_ctx, ckpt_name=ckpt)
    loaded = model_cache.get(node_ctx.home / "models" / "checkpoints" / ckpt)
    before = {k: v.clone() for k, v in loaded.parts.unet.state_dict().items()}
    base = _sample(node_ctx, model, clip)
    lmodel, lclip = nodes.impls["LoraLoader"](node_ctx, model=model, clip=clip, lora_name=lora,
                                        strength_model=1.0, strength_clip=1.0)
    assert lmodel["loras"][0][0] == lora and lclip["loras"][0][2] == 1.0
    patched = _sample(node_ctx, lmodel, lclip)
    assert not torch.allclose(base, patched)
    after = loaded.parts.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(base, _sample(node_ctx, model, clip))
    zero_model, zero_clip = nodes.impls["LoraLoader"](node_ctx, model=model, clip=clip, lora_name=lora,
                                                strength_model=0.0, strength_clip=0.0)
    assert torch.equal(base, _sample(node_ctx, zero_model, zero_clip))


def test_clip_lora_changes_conditioning(node_ctx: NodeContext) -> None:
    model, clip, _ = nodes.impls["CheckpointLoaderSimple"](node_ctx, ckpt_name="sd15.safetensors")
    _, lclip = nodes.impls["LoraLoader"](node_ctx, model=model, clip=clip, lora_name="tiny_sd15.safetensors",
                                   strength_model=0.0, strength_clip=1.0)
    (a,) = nodes.impls["CLIPTextEncode"](node_ctx, text="a cat", clip=clip)
    (b,) = nodes.impls["CLIPTextEncode"](node_ctx, text="a cat", clip=lclip)
    assert not torch.allclose(a[0][0], b[0][0])


def test_lora_that_fits_nothing(node_ctx: NodeContext) -> None:
    path = node_ctx.home / "models" / "loras" / "alien.safetensors"
    save_file({"lora_unet_nowhere_to_q.lora_up.weight": torch.zeros(4, 2),
               "lora_unet_nowhere_to_q.lora_down.weight": torch.zeros(2, 4)}, str(path))
    model, clip, _ = nodes.impls["CheckpointLoaderSimple"](node_ctx, ckpt_name="sd15.safetensors")
    with pytest.raises(NodeInputError, match=r"LoRA alien.safetensors fits no layer"):
        nodes.impls["LoraLoader"](node_ctx, model=model, clip=clip, lora_name="alien.safetensors",
                            strength_model=1.0, strength_clip=1.0)


def test_lora_with_wrong_shapes_fits_nothing(node_ctx: NodeContext) -> None:
    # right module names (attention projections of sd15), wrong widths: nothing may be patched
    path = node_ctx.home / "models" / "loras" / "wrong_shapes.safetensors"
    name = "lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q"
    save_file({f"{name}.lora_up.weight": torch.zeros(48, 2), f"{name}.lora_down.weight": torch.zeros(2, 48)},
              str(path))
    model, clip, _ = nodes.impls["CheckpointLoaderSimple"](node_ctx, ckpt_name="sd15.safetensors")
    with pytest.raises(NodeInputError, match=r"wrong_shapes\.safetensors fits no layer"):
        nodes.impls["LoraLoader"](node_ctx, model=model, clip=clip, lora_name="wrong_shapes.safetensors",
                            strength_model=1.0, strength_clip=1.0)


def test_diffusers_named_lora_keys_apply(node_ctx: NodeContext, model_cache: ModelCache) -> None:
    path = node_ctx.home / "models" / "loras" / "diffusers_names.safetensors"
    name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    gen = torch.Generator().manual_seed(0)
    save_file({f"{name}.lora_up.weight": torch.randn(32, 2, generator=gen),
               f"{name}.lora_down.weight": torch.randn(2, 32, generator=gen),
               f"{name}.alpha": torch.tensor(1.0)}, str(path))
    model, clip, _ = nodes.impls["CheckpointLoaderSimple"](node_ctx, ckpt_name="sd15.safetensors")
    lmodel, lclip = nodes.impls["LoraLoader"](node_ctx, model=model, clip=clip, lora_name="diffusers_names.safetensors",
                                        strength_model=1.0, strength_clip=1.0)
    assert not torch.allclose(_sample(node_ctx, model, clip), _sample(node_ctx, lmodel, lclip))


def test_cache_list_unload_and_lru(tmp_path: Path) -> None:
    a = make_tiny_checkpoint(tmp_path / "a.safetensors", "sd15", seed=1)
    b = make_tiny_checkpoint(tmp_path / "b.safetensors", "sd15", seed=2)
    cache = ModelCache(budget_bytes=2**30, device=torch.device("cpu"))
    first = cache.get(a)
    assert cache.get(a) is first
    assert [e["name"] for e in cache.list()] == ["a.safetensors"]
    assert cache.list()[0]["digest"] == first.digest and cache.list()[0]["device"] == "cpu"
    cache.get(b)
    assert cache.unload("a.safetensors") == 1
    assert [e["name"] for e in cache.list()] == ["b.safetensors"]
    small = ModelCache(budget_bytes=first.nbytes + 1, device=torch.device("cpu"))
    small.get(a)
    small.get(b)
    assert [e["name"] for e in small.list()] == ["b.safetensors"]  # a evicted
    assert small.unload(None) == 1 and small.list() == []


def test_digest_is_cached_by_stat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_tiny_checkpoint(tmp_path / "d.safetensors", "sd15")
    cache = ModelCache(budget_bytes=2**30, device=torch.device("cpu"))
    digest = cache.digest(path)
    monkeypatch.setattr("hashlib.sha256", lambda: (_ for _ in ()).throw(AssertionError("rehashed")))
    assert cache.digest(path) == digest
