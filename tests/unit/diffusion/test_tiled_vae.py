"""VAEDecodeTiled / VAEEncodeTiled against ComfyUI 0.8.0's tiling (comfy/utils.py tiled_scale_multidim and
get_tiled_scale_steps, comfy/sd.py decode_tiled_ / encode_tiled_): tile origins and counts, the feather, exact
blending with a decoder that has no receptive field, and the tiny VAE's tiled output near its untiled one."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from comfymesh.diffusion.latents import tiled, vae_codec
from comfymesh.diffusion.nodes import nodes
from comfymesh.diffusion.nodes.handles import checkpoint_of
from comfymesh.stage.node import NodeContext


def run(ctx: NodeContext, name: str, **inputs: Any) -> Any:
    return nodes.impls[name](ctx, **inputs)


def comfy_steps(h: int, w: int, tile: tuple[int, int], overlap: int) -> int:
    """ComfyUI's get_tiled_scale_steps: ceil((size − overlap) / (tile − overlap)) per side, 1 where it fits."""
    rows = 1 if h <= tile[0] else math.ceil((h - overlap) / (tile[0] - overlap))
    cols = 1 if w <= tile[1] else math.ceil((w - overlap) / (tile[1] - overlap))
    return rows * cols


def three_pass_steps(h: int, w: int, tile: int, overlap: int) -> int:
    """Tiles of the three passes (t × t, t/2 × 2t, 2t × t/2) when the image does not fit one tile."""
    return sum(comfy_steps(h, w, t, overlap) for t in ((tile, tile), (tile // 2, tile * 2), (tile * 2, tile // 2)))


@pytest.mark.parametrize(("size", "tile", "overlap"), [(16, 8, 2), (17, 8, 2), (64, 16, 4), (100, 32, 0),
                                                       (33, 16, 15), (8, 8, 2), (5, 8, 2), (40, 12, 3)])
def test_tile_origins_follow_comfyui(size: int, tile: int, overlap: int) -> None:
    starts = tiled._starts(size, tile, overlap)
    assert len(starts) == comfy_steps(size, 1, (tile, 1), overlap)
    assert starts[0] == 0
    # every tile lies inside, they cover the side, and consecutive tiles share at least `overlap` pixels
    ends = [min(s + tile, size) for s in starts]
    assert all(0 <= s < e <= size for s, e in zip(starts, ends, strict=True))
    assert ends[-1] == size
    assert all(nxt <= end - overlap for nxt, end in zip(starts[1:], ends, strict=False))


def test_feather_ramps_over_the_overlap() -> None:
    w = tiled._feather(torch.Size([1, 3, 6, 10]), (2, 3))[0, 0]
    ramp_h, ramp_w = torch.tensor([0.5, 1, 1, 1, 1, 0.5]), torch.tensor([1 / 3, 2 / 3, 1, 1, 1, 1, 1, 1, 2 / 3, 1 / 3])
    assert torch.allclose(w, ramp_h[:, None] * ramp_w[None, :])
    assert torch.equal(tiled._feather(torch.Size([1, 1, 2, 4]), (2, 4)), torch.ones(1, 1, 2, 4))  # sides ≤ f stay flat


def test_blending_is_exact_for_a_decoder_without_receptive_field() -> None:
    """Pointwise then ×8 nearest: every tile's pixels equal the whole image's, so the weighted mean must too."""
    seen: list[tuple[int, ...]] = []

    def fn(z: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(z.shape))
        y = torch.tanh(z[:, :3] * 1.7 + z[:, 3:4])
        return y.repeat_interleave(8, 2).repeat_interleave(8, 3)

    z = torch.randn(2, 4, 13, 21, generator=torch.Generator().manual_seed(3))
    whole = fn(z)
    seen.clear()
    out = tiled.tiled_pass(z, fn, (6, 8), 2, 8, 3)
    torch.testing.assert_close(out, whole, rtol=0, atol=1e-6)
    assert len(seen) == 2 * comfy_steps(13, 21, (6, 8), 2)
    assert max(s[2] for s in seen) <= 6 and max(s[3] for s in seen) <= 8


@pytest.fixture
def tiny_vae(node_ctx: NodeContext) -> tuple[Any, Any]:
    vae = run(node_ctx, "CheckpointLoaderSimple", ckpt_name="sd15.safetensors")[2]
    return vae, checkpoint_of(node_ctx, vae).parts.vae


@pytest.fixture
def decoder_calls(tiny_vae: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, ...]]]:
    """Shapes of every input the tiny VAE's decoder and encoder get (the cached module is restored after)."""
    module = tiny_vae[1]
    seen: list[tuple[int, ...]] = []

    def recording(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            seen.append(tuple(x.shape))
            return fn(x, *args, **kwargs)
        return wrapped

    monkeypatch.setattr(module, "decode", recording(module.decode))
    monkeypatch.setattr(module, "encode", recording(module.encode))
    yield seen


def test_decode_tiled_runs_tiles_and_stays_near_the_untiled_decode(
        node_ctx: NodeContext, tiny_vae: tuple[Any, Any], decoder_calls: list[tuple[int, ...]]) -> None:
    vae, module = tiny_vae
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    whole = vae_codec.decode(module, z)
    decoder_calls.clear()
    # 64 px tiles with 32 px overlap: the node cuts the overlap to a quarter (16 px) → 8 and 2 latent pixels
    out = run(node_ctx, "VAEDecodeTiled", samples={"samples": z}, vae=vae, tile_size=64, overlap=32)[0]
    assert out.shape == whole.shape == (1, 128, 128, 3)
    assert len(decoder_calls) == three_pass_steps(16, 16, 8, 2) == 23
    assert max(s[2] * s[3] for s in decoder_calls) == 16 * 4  # no tile bigger than the 2t × t/2 ones
    # The random VAE's GroupNorm sees only its tile, so tiles differ from the whole; the three feathered passes
    # keep the mean error at ~0.09 of the [0, 1] range (measured 0.089), below cutting into 4 tiles (0.109).
    err = (out - whole).abs().mean().item()
    naive = torch.cat([torch.cat([vae_codec.decode(module, z[:, :, y:y + 8, x:x + 8]) for x in (0, 8)], 2)
                       for y in (0, 8)], 1)
    assert err < 0.1
    assert err < (naive - whole).abs().mean().item()
    # one tile that holds the whole latent is the plain decode
    decoder_calls.clear()
    same = run(node_ctx, "VAEDecodeTiled", samples={"samples": z}, vae=vae, tile_size=256, overlap=64)[0]
    torch.testing.assert_close(same, whole, rtol=0, atol=1e-6)  # (a + a + a) / 3 rounds
    assert len(decoder_calls) == 3


def test_encode_tiled_runs_tiles_and_stays_near_the_untiled_encode(
        node_ctx: NodeContext, tiny_vae: tuple[Any, Any], decoder_calls: list[tuple[int, ...]]) -> None:
    vae, module = tiny_vae
    pixels = torch.rand(1, 128, 128, 3, generator=torch.Generator().manual_seed(1))
    whole = vae_codec.encode(module, pixels)
    decoder_calls.clear()
    out = run(node_ctx, "VAEEncodeTiled", pixels=pixels, vae=vae, tile_size=64, overlap=16)[0]["samples"]
    assert out.shape == whole.shape == (1, 4, 16, 16)
    assert len(decoder_calls) == three_pass_steps(128, 128, 64, 16) == 23
    assert max(s[2] * s[3] for s in decoder_calls) == 64 * 64
    err = (out - whole).abs().mean().item()
    naive = torch.cat([torch.cat([vae_codec.encode(module, pixels[:, y:y + 64, x:x + 64]) for x in (0, 64)], 3)
                       for y in (0, 64)], 2)
    # latent units (the latent's std is ~0.5): measured 0.146, and 0.217 when cut into 4 tiles
    assert err < 0.2
    assert err < (naive - whole).abs().mean().item()
    decoder_calls.clear()
    same = run(node_ctx, "VAEEncodeTiled", pixels=pixels, vae=vae, tile_size=256, overlap=64)[0]["samples"]
    torch.testing.assert_close(same, whole, rtol=0, atol=1e-6)
    assert len(decoder_calls) == 3
