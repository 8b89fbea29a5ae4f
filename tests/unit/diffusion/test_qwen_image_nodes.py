"""Qwen-Image's nodes as ComfyUI 0.8.0 declares them (golden qwen_image_object_info.json), the Layered latent's
frames, the edit encoders' image scaling rule, and their refusals (they run on tiny files in
tests/integration/test_qwen_image_mesh.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from comfymesh.diffusion.nodes import nodes
from comfymesh.diffusion.nodes.qwen_image import scaled
from comfymesh.stage.node import NodeContext

GOLDEN = Path(__file__).parents[2] / "golden" / "qwen_image_object_info.json"


def test_object_info_equals_comfyui_080() -> None:
    golden = json.loads(GOLDEN.read_text())
    golden.pop("_about")
    assert {name: nodes.schemas[name].object_info() for name in golden} == golden


def test_layered_latent_has_a_frame_per_layer_and_the_composite(node_ctx: NodeContext) -> None:
    (latent,) = nodes.impls["EmptyQwenImageLayeredLatentImage"](node_ctx, width=64, height=48, layers=3, batch_size=2)
    assert latent["samples"].shape == (2, 16, 4, 6, 8)
    assert not latent["samples"].any()


def test_images_scale_to_the_area_in_their_aspect_ratio() -> None:
    image = torch.rand(1, 300, 400, 3)
    # Edit: sqrt(1024² / (400·300)) ≈ 2.956 → 1182 × 887
    assert scaled(image, 1024 * 1024).shape == (1, 887, 1182, 3)
    # Edit Plus's reference: sides rounded to multiples of 8 → 1184 × 888; the vision encoder's 384² area
    assert scaled(image, 1024 * 1024, 8.0).shape == (1, 888, 1184, 3)
    assert scaled(image, 384 * 384).shape == (1, 333, 443, 3)
    flat = torch.full((1, 10, 10, 3), 0.25)
    assert torch.allclose(scaled(flat, 400), torch.full((1, 20, 20, 3), 0.25))  # area resampling keeps a flat image


def test_edit_encoders_refuse_other_clips(node_ctx: NodeContext) -> None:
    from comfymesh.contracts.errors import NodeInputError
    from comfymesh.contracts.handles import HandleKind, checkpoint_handle
    from comfymesh.diffusion.models.cache import get_model_cache

    name = "sd15.safetensors"
    digest = get_model_cache().get(node_ctx.home / "models" / "checkpoints" / name).digest
    clip = checkpoint_handle(HandleKind.CLIP, name, digest, loras=[], stop_at_clip_layer=None)
    for node_name in ("TextEncodeQwenImageEdit", "TextEncodeQwenImageEditPlus"):
        with pytest.raises(NodeInputError, match="needs Qwen-Image's text encoder"):
            nodes.impls[node_name](node_ctx, clip=clip, prompt="a")
