"""CLIP vision (HF naming, built from shapes), ComfyUI's preprocessing, unCLIP / SDXL revision feeding the
ADM vector, and the FLUX Redux style model, checked against the formulas they implement."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from comfymesh.artifacts.codec import decode_value, encode_value
from comfymesh.artifacts.store import ArtifactStore
from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.models import clip_vision, style_model, unclip
from comfymesh.diffusion.nodes import nodes
from comfymesh.stage.node import NodeContext


def run(ctx: NodeContext, name: str, **inputs: Any) -> Any:
    return nodes.impls[name](ctx, **inputs)[0]


@pytest.fixture(scope="module")
def vision_home(tiny_home: Path) -> Path:
    # projection 32 = the tiny SDXL's pooled width, so its image embeds can stand in for it (revision)
    clip_vision.make_tiny_clip_vision(tiny_home / "models" / "clip_vision" / "tiny_vit.safetensors", seed=1)
    style_model.make_tiny_style_model(tiny_home / "models" / "style_models" / "tiny_redux.safetensors", seed=2)
    return tiny_home


@pytest.fixture
def vision(node_ctx: NodeContext, vision_home: Path) -> dict[str, Any]:
    return run(node_ctx, "CLIPVisionLoader", clip_name="tiny_vit.safetensors")


def test_preprocess_is_comfyuis_resize_crop_quantise_normalise() -> None:
    image = torch.rand(1, 300, 450, 3, generator=torch.Generator().manual_seed(0))
    out = clip_vision.preprocess(image, 224, "center")
    resized = F.interpolate(image.movedim(-1, 1), size=(224, 336), mode="bicubic", antialias=True)[:, :, :, 56:280]
    mean = torch.tensor(clip_vision.CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(clip_vision.CLIP_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out, ((resized * 255).clip(0, 255).round() / 255 - mean) / std)
    squashed = F.interpolate(image.movedim(-1, 1), size=(224, 224), mode="bicubic", antialias=True)
    torch.testing.assert_close(clip_vision.preprocess(image, 224, "none"),
                               ((squashed * 255).clip(0, 255).round() / 255 - mean) / std)
    # a 224 square is only quantised and normalised
    square = torch.rand(1, 224, 224, 3)
    torch.testing.assert_close(clip_vision.preprocess(square, 224), ((square.movedim(-1, 1) * 255).round() / 255 - mean) / std)


def test_encode_gives_the_three_outputs_comfyui_reads(node_ctx: NodeContext, vision: dict[str, Any],
                                                      vision_home: Path) -> None:
    image = torch.rand(2, 64, 80, 3, generator=torch.Generator().manual_seed(1))
    out = run(node_ctx, "CLIPVisionEncode", clip_vision=vision, image=image, crop="center")
    assert out["image_embeds"].shape == (2, 32)
    assert out["last_hidden_state"].shape == out["penultimate_hidden_states"].shape == (2, 257, 32)
    model: Any = clip_vision.load_clip_vision(vision_home / "models" / "clip_vision" / "tiny_vit.safetensors").model
    with torch.no_grad():
        hf = model(pixel_values=clip_vision.preprocess(image, 224), output_hidden_states=True)
        tower: Any = model.vision_model
        # image_embeds = projection of the post-layernormed class token of the last layer
        expected = model.visual_projection(tower.post_layernorm(hf.last_hidden_state[:, 0]))
    torch.testing.assert_close(out["image_embeds"], expected)
    torch.testing.assert_close(out["penultimate_hidden_states"], hf.hidden_states[1])  # of 2 layers: after the first
    torch.testing.assert_close(out["last_hidden_state"], hf.hidden_states[2])


def _to_open_clip(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The OpenCLIP form of an HF CLIP vision state dict, written out by hand from OpenCLIP's layout."""
    top = {"embeddings.class_embedding": "class_embedding", "embeddings.patch_embedding.weight": "conv1.weight",
           "embeddings.position_embedding.weight": "positional_embedding", "pre_layrnorm": "ln_pre",
           "post_layernorm": "ln_post", "layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
           "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    out = {"visual.proj": hf["visual_projection.weight"].t().contiguous()}
    for key, value in hf.items():
        name = key.removeprefix("vision_model.").replace("encoder.layers.", "transformer.resblocks.")
        if "self_attn.q_proj" in name:
            kind = name.rsplit(".", 1)[1]
            fused = torch.cat([hf[key.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")])
            out["visual." + name.replace("self_attn.q_proj." + kind, f"attn.in_proj_{kind}")] = fused
        elif key.startswith("vision_model.") and "_proj." not in name.replace("out_proj.", ""):
            for hf_part, open_part in top.items():
                name = name.replace(hf_part, open_part)
            out["visual." + name] = value
    return out


def test_an_open_clip_file_loads_to_the_same_model(node_ctx: NodeContext, vision_home: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = vision_home / "models" / "clip_vision"
    open_clip = _to_open_clip(load_file(str(folder / "tiny_vit.safetensors")))
    assert "visual.transformer.resblocks.1.attn.in_proj_weight" in open_clip
    save_file(open_clip, str(folder / "open_clip.safetensors"))
    image = torch.rand(1, 40, 30, 3)
    outputs = [run(node_ctx, "CLIPVisionEncode", clip_vision=run(node_ctx, "CLIPVisionLoader", clip_name=name),
                   image=image, crop="center") for name in ("tiny_vit.safetensors", "open_clip.safetensors")]
    for key in outputs[0]:
        torch.testing.assert_close(outputs[1][key], outputs[0][key])


def test_a_file_that_is_no_clip_vision_model_is_refused(node_ctx: NodeContext, vision_home: Path) -> None:
    from safetensors.torch import save_file

    save_file({"something.weight": torch.zeros(3, 3)}, str(vision_home / "models" / "clip_vision" / "other.safetensors"))
    with pytest.raises(ModelError, match="not a CLIP vision model"):
        run(node_ctx, "CLIPVisionLoader", clip_name="other.safetensors")


def _alpha_bar(t: float) -> float:
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def _sqrt_alphas_cumprod(level: int) -> tuple[float, float]:
    cumprod = 1.0
    for i in range(level + 1):
        cumprod *= 1 - min(1 - _alpha_bar((i + 1) / 1000) / _alpha_bar(i / 1000), 0.999)
    return math.sqrt(cumprod), math.sqrt(1 - cumprod)


def test_revision_pooled_is_the_noise_augmented_weighted_image_embed() -> None:
    embeds = torch.randn(1, 32, generator=torch.Generator().manual_seed(2))
    extras = unclip.add_unclip({"pooled_output": torch.zeros(1, 32)}, embeds, 0.7, 0.25)
    pooled = unclip.sdxl_pooled(extras, seed=42)
    keep, add = _sqrt_alphas_cumprod(round(999 * 0.25))
    noise = torch.randn(1, 32, generator=torch.Generator().manual_seed(32))
    torch.testing.assert_close(pooled, 0.7 * (keep * embeds + add * noise))
    # two images: the weighted sum, noised again at level 0 with the same draw
    extras = unclip.add_unclip(extras, embeds * 2, 0.5, 0.0)
    keep0, add0 = _sqrt_alphas_cumprod(0)
    first = 0.7 * (keep * embeds + add * noise)
    second = 0.5 * (keep0 * embeds * 2 + add0 * noise)
    torch.testing.assert_close(unclip.sdxl_pooled(extras, seed=42), keep0 * (first + second) + add0 * noise)
    assert unclip.sdxl_pooled({"pooled_output": "text"}, seed=0) == "text"


def test_unclip_conditioning_replaces_sdxl_pooled_output_in_sampling(node_ctx: NodeContext,
                                                                     vision: dict[str, Any]) -> None:
    model, clip, _ = nodes.impls["CheckpointLoaderSimple"](node_ctx, ckpt_name="sdxl.safetensors")
    text = run(node_ctx, "CLIPTextEncode", text="a cat", clip=clip)
    negative = run(node_ctx, "CLIPTextEncode", text="", clip=clip)
    seen = run(node_ctx, "CLIPVisionEncode", clip_vision=vision, image=torch.rand(1, 32, 32, 3), crop="center")
    revision = run(node_ctx, "unCLIPConditioning", conditioning=text, clip_vision_output=seen, strength=0.8,
                   noise_augmentation=0.1)
    assert run(node_ctx, "unCLIPConditioning", conditioning=text, clip_vision_output=seen, strength=0.0,
               noise_augmentation=0.1) is text
    latent = run(node_ctx, "EmptyLatentImage", width=64, height=64, batch_size=1)

    def sample(positive: list[Any]) -> torch.Tensor:
        return run(node_ctx, "KSampler", model=model, seed=5, steps=2, cfg=3.0, sampler_name="euler",
                   scheduler="normal", positive=positive, negative=negative, latent_image=latent)["samples"]

    # the same conditioning with its pooled output replaced by hand gives the same samples
    by_hand = [[text[0][0], {**text[0][1], "pooled_output": unclip.sdxl_pooled(revision[0][1], seed=5)}]]
    with_revision = sample(revision)
    torch.testing.assert_close(with_revision, sample(by_hand))
    assert not torch.allclose(with_revision, sample(text))


def test_style_model_appends_its_tokens_scaled(node_ctx: NodeContext, vision: dict[str, Any],
                                               vision_home: Path) -> None:
    seen = run(node_ctx, "CLIPVisionEncode", clip_vision=vision, image=torch.rand(2, 24, 24, 3), crop="none")
    redux = run(node_ctx, "StyleModelLoader", style_model_name="tiny_redux.safetensors")
    text: list[list[Any]] = [[torch.randn(1, 5, 32), {"pooled_output": torch.zeros(1, 32)}]]
    out = run(node_ctx, "StyleModelApply", conditioning=text, style_model=redux, clip_vision_output=seen,
              strength=0.5, strength_type="multiply")
    module = style_model.load_style_model(vision_home / "models" / "style_models" / "tiny_redux.safetensors")
    with torch.no_grad():
        tokens = module.redux_down(F.silu(module.redux_up(seen["last_hidden_state"]))).reshape(1, 2 * 257, 32)
    assert out[0][0].shape == (1, 5 + 2 * 257, 32)
    torch.testing.assert_close(out[0][0], torch.cat([text[0][0], tokens * 0.5], dim=1))
    assert "attention_mask" not in out[0][1]
    # attn_bias: tokens unscaled, log(strength) on their columns for the text rows
    biased = run(node_ctx, "StyleModelApply", conditioning=text, style_model=redux, clip_vision_output=seen,
                 strength=0.5, strength_type="attn_bias")
    torch.testing.assert_close(biased[0][0], torch.cat([text[0][0], tokens], dim=1))
    mask = biased[0][1]["attention_mask"]
    assert mask.shape == (1, 5 + 514 + 1, 5 + 514 + 1) and mask.dtype == torch.float16
    assert torch.all(mask[:, :5, 5:519] == torch.tensor(math.log(0.5), dtype=torch.float16))
    assert torch.all(mask[:, :5, :5] == 0) and torch.all(mask[:, 519:, 5:519] == mask[0, 0, 5])


def test_vision_outputs_and_unclip_extras_cross_the_wire(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    output = {"image_embeds": torch.rand(2, 8), "last_hidden_state": torch.rand(2, 5, 4),
              "penultimate_hidden_states": torch.rand(2, 5, 4)}
    back = decode_value(encode_value("CLIP_VISION_OUTPUT", output, store), store)
    assert set(back) == set(output)
    for key, value in output.items():
        np.testing.assert_array_equal(back[key], value.numpy())
    cond: list[list[Any]] = [[torch.rand(1, 3, 4), unclip.add_unclip({"pooled_output": torch.rand(1, 8)}, output["image_embeds"], 1.0, 0.0)]]
    extras = decode_value(encode_value("CONDITIONING", cond, store), store)[0][1]
    torch.testing.assert_close(unclip.sdxl_pooled(extras, seed=3), unclip.sdxl_pooled(cond[0][1], seed=3))
