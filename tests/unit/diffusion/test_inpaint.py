"""Inpainting, instruct-pix2pix and DifferentialDiffusion against ComfyUI's formulas, on tiny tensors and
tiny 9- and 8-channel checkpoints (CPU)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from comfymesh.diffusion.latents import vae_codec
from comfymesh.diffusion.latents.formats import SD15, SDXL
from comfymesh.diffusion.models.cache import get_model_cache
from comfymesh.diffusion.models.tiny_concat import make_tiny_concat_checkpoint
from comfymesh.diffusion.nodes import nodes
from comfymesh.diffusion.nodes.handles import checkpoint_of
from comfymesh.diffusion.nodes.inpaint import grow_mask
from comfymesh.diffusion.sampling.concat import BLANK_INPAINT_LATENT, concat_for, resize_to_batch
from comfymesh.diffusion.sampling.differential import differential_mask_fn
from comfymesh.diffusion.sampling.model_sampling import ModelSampling
from comfymesh.stage.node import NodeContext

GOLDEN = Path(__file__).parents[2] / "golden" / "inpaint_object_info.json"


def run(ctx: NodeContext, name: str, **inputs: Any) -> Any:
    return nodes.impls[name](ctx, **inputs)


@pytest.fixture(scope="module")
def concat_home(tiny_home: Path) -> Path:
    """The tiny home with a 9-channel SD1.5 inpainting and an 8-channel SD1.5 ip2p checkpoint."""
    ckpts = tiny_home / "models" / "checkpoints"
    for kind in ("inpaint", "ip2p"):
        if not (ckpts / f"sd15_{kind}.safetensors").exists():
            make_tiny_concat_checkpoint(ckpts / f"sd15_{kind}.safetensors", "sd15", kind, seed=5)
    return tiny_home


def image(h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(seed))


def square_mask(h: int = 32, w: int = 32) -> torch.Tensor:
    mask = torch.zeros(1, h, w)
    mask[:, 8:24, 8:24] = 1.0
    return mask


def test_object_info_equals_comfyui_080() -> None:
    golden = json.loads(GOLDEN.read_text())
    golden.pop("_about")
    assert {name: nodes.schemas[name].object_info() for name in golden} == golden


# --- formulas on tiny tensors ---------------------------------------------------------------------------


def test_grow_mask_is_a_box_dilation_of_the_rounded_mask() -> None:
    mask = torch.zeros(1, 1, 16, 16)
    mask[0, 0, 7, 9] = 0.6  # rounds to 1
    mask[0, 0, 2, 2] = 0.4  # rounds to 0
    grown = grow_mask(mask, 6)[0, 0]
    # a 6-wide box with padding 3 covers the pixel from 2 before to 3 after it (the first 16 outputs kept)
    expected = torch.zeros(16, 16)
    expected[5:11, 7:13] = 1.0
    assert torch.equal(grown, expected)
    assert torch.equal(grow_mask(mask, 0), mask)
    odd = grow_mask(mask, 3)[0, 0]
    assert odd.sum() == 9 and odd[6:9, 8:11].eq(1).all()


def test_resize_to_batch_follows_comfyui_indexes() -> None:
    t = torch.arange(4.0).reshape(4, 1, 1, 1)
    assert resize_to_batch(t, 4) is t
    assert resize_to_batch(t, 2).flatten().tolist() == [0.0, 3.0]  # spread: round(i * 3)
    assert resize_to_batch(t, 3).flatten().tolist() == [0.0, 2.0, 3.0]  # round(1.5) is 2
    assert resize_to_batch(t[:2], 5).flatten().tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]  # floor((i + 0.5) * 2/5)
    assert resize_to_batch(t, 1).flatten().tolist() == [0.0]


def test_inpaint_concat_is_mask_then_masked_latent_in_comfyui_order() -> None:
    latent = torch.randn(2, 4, 4, 4)
    concat_image = torch.randn(1, 4, 4, 4)
    pixel = torch.zeros(1, 1, 32, 32)
    pixel[..., 0:20, 0:12] = 1.0
    out = concat_for("inpaint", {"concat_latent_image": concat_image, "concat_mask": pixel}, SD15, "sd1", latent, None)
    assert out is not None and out.shape == (2, 5, 4, 4)
    expected_mask = F.interpolate(pixel, size=(4, 4), mode="bilinear").round()
    assert torch.equal(out[:, :1], expected_mask.expand(2, -1, -1, -1))
    assert torch.equal(out[:, 1:], (concat_image * 0.18215).expand(2, -1, -1, -1))
    # no concat extras: the call's noise mask (first channel, rounded) and its own scaled latent
    noise_mask = torch.full((2, 4, 4, 4), 0.7)
    own = concat_for("inpaint", {}, SD15, "sd1", latent, noise_mask)
    assert own is not None and torch.equal(own[:, :1], torch.ones(2, 1, 4, 4)) and torch.equal(own[:, 1:], latent)
    # no mask at all: a ones mask and the latent of a mid-grey image
    blank = concat_for("inpaint", {}, SD15, "sd1", latent, None)
    assert blank is not None and torch.equal(blank[:, 0], torch.ones(2, 4, 4))
    assert torch.allclose(blank[0, 1:, 0, 0], torch.tensor(BLANK_INPAINT_LATENT))
    assert concat_for(None, {"concat_latent_image": concat_image}, SD15, "sd1", latent, None) is None


def test_ip2p_concat_is_unscaled_on_sd1_and_scaled_on_sdxl() -> None:
    latent = torch.randn(1, 4, 4, 4)
    image_latent = torch.randn(1, 4, 8, 8)
    sd1 = concat_for("ip2p", {"concat_latent_image": image_latent}, SD15, "sd1", latent, None)
    assert sd1 is not None and torch.equal(sd1, F.interpolate(image_latent, size=(4, 4), mode="bilinear"))
    xl = concat_for("ip2p", {"concat_latent_image": image_latent}, SDXL, "sdxl", latent, None)
    assert xl is not None and torch.allclose(xl, sd1 * 0.13025)
    assert torch.equal(concat_for("ip2p", {}, SD15, "sd1", latent, None), torch.zeros_like(latent))  # type: ignore[arg-type]


def test_differential_mask_thresholds_by_timestep_progress() -> None:
    ms = ModelSampling()
    sigmas = torch.tensor([ms.sigmas[799].item(), ms.sigmas[399].item(), 0.0])
    fn = differential_mask_fn(ms, sigmas, 1.0)
    mask = torch.tensor([0.1, 0.5, 0.51, 0.9])
    # t_from 799, t_to 0 (σ_min): at σ_399 the threshold is 399/799 ≈ 0.4994
    assert fn(mask, sigmas[1]).tolist() == [0.0, 1.0, 1.0, 1.0]
    assert fn(mask, sigmas[0]).tolist() == [0.0, 0.0, 0.0, 0.0]  # threshold 1: nothing yet
    half = differential_mask_fn(ms, sigmas, 0.5)(mask, sigmas[1])
    assert torch.allclose(half, 0.5 * torch.tensor([0.0, 1.0, 1.0, 1.0]) + 0.5 * mask)
    assert torch.equal(differential_mask_fn(ms, sigmas, 0.0)(mask, sigmas[1]), fn(mask, sigmas[1]))


# --- nodes on tiny checkpoints --------------------------------------------------------------------------


def test_vae_encode_for_inpaint_greys_the_masked_pixels_and_grows_the_noise_mask(node_ctx: NodeContext) -> None:
    _, _, vae = run(node_ctx, "CheckpointLoaderSimple", ckpt_name="sd15.safetensors")
    pixels, mask = image(36, 34), square_mask(36, 34)  # cropped to 32 x 32, offsets (2, 1)
    latent = run(node_ctx, "VAEEncodeForInpaint", pixels=pixels, vae=vae, mask=mask, grow_mask_by=6)[0]
    cropped, m = pixels[:, 2:34, 1:33].clone(), mask[:, 2:34, 1:33]
    cropped[m.round().bool()] = 0.5
    module = checkpoint_of(node_ctx, vae).parts.vae
    assert torch.equal(latent["samples"], vae_codec.encode(module, cropped))
    assert latent["noise_mask"].shape == (1, 1, 32, 32)
    assert torch.equal(latent["noise_mask"], grow_mask(m.reshape(1, 1, 32, 32), 6).round())


def test_inpaint_model_conditioning_sets_concat_and_the_noise_mask(node_ctx: NodeContext) -> None:
    _, clip, vae = run(node_ctx, "CheckpointLoaderSimple", ckpt_name="sd15.safetensors")
    pos = run(node_ctx, "CLIPTextEncode", text="a", clip=clip)[0]
    pixels, mask = image(), square_mask() * 0.8
    p, n, latent = run(node_ctx, "InpaintModelConditioning", positive=pos, negative=pos, vae=vae, pixels=pixels,
                       mask=mask, noise_mask=True)
    module = checkpoint_of(node_ctx, vae).parts.vae
    assert torch.equal(latent["samples"], vae_codec.encode(module, pixels))
    assert torch.equal(latent["noise_mask"], mask.reshape(1, 1, 32, 32))  # bilinear to its own size: unchanged
    greyed = pixels.clone()
    greyed[mask.round().bool()] = 0.5
    for cond in (p, n):
        assert torch.equal(cond[0][1]["concat_latent_image"], vae_codec.encode(module, greyed))
        assert torch.equal(cond[0][1]["concat_mask"], latent["noise_mask"])
    assert "concat_mask" not in pos[0][1]
    without = run(node_ctx, "InpaintModelConditioning", positive=pos, negative=pos, vae=vae, pixels=pixels,
                  mask=mask, noise_mask=False)[2]
    assert "noise_mask" not in without


def _sample(ctx: NodeContext, model: Any, pos: Any, neg: Any, latent: dict[str, Any], **kw: Any) -> torch.Tensor:
    return run(ctx, "KSampler", model=model, seed=kw.pop("seed", 7), steps=2, cfg=kw.pop("cfg", 2.0),
               sampler_name="euler", scheduler="normal", positive=pos, negative=neg, latent_image=latent,
               **kw)[0]["samples"]


def test_a_9_channel_inpainting_model_samples_with_the_concat_and_keeps_the_unmasked_latent(
        concat_home: Path, node_ctx: NodeContext) -> None:
    model, clip, vae = run(node_ctx, "CheckpointLoaderSimple", ckpt_name="sd15_inpaint.safetensors")
    assert get_model_cache().sampling_model(checkpoint_of(node_ctx, model)).in_channels == 9
    pos = run(node_ctx, "CLIPTextEncode", text="a cat", clip=clip)[0]
    neg = run(node_ctx, "CLIPTextEncode", text="", clip=clip)[0]
    p, n, latent = run(node_ctx, "InpaintModelConditioning", positive=pos, negative=neg, vae=vae, pixels=image(),
                       mask=square_mask(), noise_mask=True)
    first = _sample(node_ctx, model, p, n, latent)
    assert torch.equal(first, _sample(node_ctx, model, p, n, latent))  # bit-stable reruns
    keep = (1 - F.interpolate(latent["noise_mask"], size=(4, 4), mode="bilinear")).bool().expand_as(first)
    assert torch.allclose(first[keep], latent["samples"][keep], atol=1e-5)  # outside the mask: the original
    assert not torch.allclose(first[~keep], latent["samples"][~keep], atol=1e-3)
    # the concat channels reach the UNet: another masked image gives another result
    other = [[c[0], {**c[1], "concat_latent_image": torch.zeros_like(c[1]["concat_latent_image"])}] for c in p]
    assert not torch.equal(first, _sample(node_ctx, model, other, n, latent))
    decoded = run(node_ctx, "VAEDecode", samples={"samples": first}, vae=vae)[0]
    assert decoded.shape == (1, 32, 32, 3)


def test_a_4_channel_model_ignores_the_concat(node_ctx: NodeContext) -> None:
    model, clip, vae = run(node_ctx, "CheckpointLoaderSimple", ckpt_name="sd15.safetensors")
    pos = run(node_ctx, "CLIPTextEncode", text="a", clip=clip)[0]
    p, n, latent = run(node_ctx, "InpaintModelConditioning", positive=pos, negative=pos, vae=vae, pixels=image(),
                       mask=square_mask(), noise_mask=True)
    assert torch.equal(_sample(node_ctx, model, p, n, latent), _sample(node_ctx, model, pos, pos, latent))


def test_instruct_pix2pix_on_an_8_channel_model(concat_home: Path, node_ctx: NodeContext) -> None:
    model, clip, vae = run(node_ctx, "CheckpointLoaderSimple", ckpt_name="sd15_ip2p.safetensors")
    pos = run(node_ctx, "CLIPTextEncode", text="make it red", clip=clip)[0]
    p, n, latent = run(node_ctx, "InstructPixToPixConditioning", positive=pos, negative=pos, vae=vae,
                       pixels=image(33, 35))
    module = checkpoint_of(node_ctx, vae).parts.vae
    assert torch.equal(p[0][1]["concat_latent_image"], vae_codec.encode(module, image(33, 35)[:, 0:32, 1:33]))
    assert torch.equal(latent["samples"], torch.zeros(1, 4, 4, 4))
    out = _sample(node_ctx, model, p, n, latent)
    assert out.shape == (1, 4, 4, 4) and torch.equal(out, _sample(node_ctx, model, p, n, latent))


def test_differential_diffusion_is_recorded_and_changes_a_soft_masked_sample(node_ctx: NodeContext) -> None:
    model, clip, _ = run(node_ctx, "CheckpointLoaderSimple", ckpt_name="sd15.safetensors")
    patched = run(node_ctx, "DifferentialDiffusion", model=model, strength=0.5)[0]
    assert patched["differential_diffusion"] == 0.5 and "differential_diffusion" not in model
    pos = run(node_ctx, "CLIPTextEncode", text="a", clip=clip)[0]
    ramp = torch.linspace(0, 1, 32).reshape(1, 1, 32).expand(1, 32, 32)
    latent = {"samples": torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1)),
              "noise_mask": ramp.reshape(1, 1, 32, 32)}
    assert not torch.equal(_sample(node_ctx, model, pos, pos, latent), _sample(node_ctx, patched, pos, pos, latent))
    # the strength blends the per-step binary mask with the soft one
    full = run(node_ctx, "DifferentialDiffusion", model=model, strength=1.0)[0]
    assert not torch.equal(_sample(node_ctx, full, pos, pos, latent), _sample(node_ctx, patched, pos, pos, latent))
