"""CLIP encoding: window concatenation, weighting against the empty prompt, layers, SDXL layout (§3)."""

from __future__ import annotations

import pytest
import torch

from comfymesh.diffusion.models.cache import ModelCache
from comfymesh.diffusion.text.encode import block_index, encode_prompt, tokenize_weighted, windows
from comfymesh.stage.node import NodeContext


def _encoders(cache: ModelCache, ctx: NodeContext, name: str):
    ckpt = cache.get(ctx.home / "models" / "checkpoints" / name)
    return ckpt, cache.text_encoders(ckpt)


def test_block_index() -> None:
    assert block_index(None, -1, 12) == 11
    assert block_index(-2, -1, 12) == 10
    assert block_index(-24, -1, 12) == 11  # beyond the depth: last layer


def test_sd1_shapes_and_long_prompt(node_ctx: NodeContext, model_cache: ModelCache) -> None:
    _, enc = _encoders(model_cache, node_ctx, "sd15.safetensors")
    cond, pooled = encode_prompt(enc, "a photo of a cat")
    assert cond.shape == (1, 77, 32) and pooled is None
    long_cond, _ = encode_prompt(enc, " ".join(["word"] * 100))
    assert long_cond.shape == (1, 154, 32)


def test_weighting_against_empty(node_ctx: NodeContext, model_cache: ModelCache) -> None:
    _, enc = _encoders(model_cache, node_ctx, "sd15.safetensors")
    plain, _ = encode_prompt(enc, "a red cat")
    weighted, _ = encode_prompt(enc, "a (red:1.5) cat")
    empty, _ = encode_prompt(enc, "")
    # positions: BOS, a, red, cat, EOS…; only "red" (index 2) changes
    assert torch.equal(weighted[:, [0, 1, 3, 4]], plain[:, [0, 1, 3, 4]])
    expected = empty[:, 2] + 1.5 * (plain[:, 2] - empty[:, 2])
    assert torch.allclose(weighted[:, 2], expected, atol=1e-5)


def test_clip_skip_differs_and_default_is_last(node_ctx: NodeContext, model_cache: ModelCache) -> None:
    _, enc = _encoders(model_cache, node_ctx, "sd15.safetensors")
    default, _ = encode_prompt(enc, "a cat")
    last, _ = encode_prompt(enc, "a cat", stop_at_clip_layer=-1)
    skip2, _ = encode_prompt(enc, "a cat", stop_at_clip_layer=-2)
    assert torch.equal(default, last)
    assert not torch.allclose(default, skip2)


def test_matches_transformers_forward_for_sd1(node_ctx: NodeContext, model_cache: ModelCache) -> None:
    ckpt, enc = _encoders(model_cache, node_ctx, "sd15.safetensors")
    cond, _ = encode_prompt(enc, "a photo of a cat")
    ids = torch.tensor([[t for t, _ in windows(tokenize_weighted("a photo of a cat"), 49407)[0]]])
    with torch.no_grad():
        ref = ckpt.parts.clips["l"](input_ids=ids).last_hidden_state
    assert torch.allclose(cond, ref, atol=1e-5)


def test_sdxl_concat_and_pooled(node_ctx: NodeContext, model_cache: ModelCache) -> None:
    _, enc = _encoders(model_cache, node_ctx, "sdxl.safetensors")
    cond, pooled = encode_prompt(enc, "a (photo:1.2) of a cat")
    assert cond.shape == (1, 77, 64)
    assert pooled is not None and pooled.shape == (1, 32)
    plain_pooled = encode_prompt(enc, "a photo of a cat")[1]
    assert plain_pooled is not None
    assert torch.allclose(pooled, plain_pooled)  # weights never touch the pooled vector


@pytest.mark.parametrize("text", ["embedding:missing a cat"])
def test_missing_embedding_is_ignored(node_ctx: NodeContext, model_cache: ModelCache, text: str) -> None:
    _, enc = _encoders(model_cache, node_ctx, "sd15.safetensors")
    with_missing, _ = encode_prompt(enc, text)
    plain, _ = encode_prompt(enc, "a cat")
    assert torch.equal(with_missing, plain)
