"""Chroma Radiance's nodes: declared as ComfyUI 0.8.0 declares them (golden chroma_radiance_object_info.json), the
empty pixel-space latent (RGB zeros at full size) and ChromaRadianceOptions passing the model through; a Chroma
Radiance model file is refused by name until the family exists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfymesh.contracts.errors import ModelError, NodeInputError
from comfymesh.contracts.handles import unet_file_handle
from comfymesh.diffusion.families.chroma import parse_chroma
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.nodes import nodes
from comfymesh.diffusion.nodes.chroma_radiance import chroma_radiance_options, empty_chroma_radiance_latent
from comfymesh.stage.node import NodeContext

GOLDEN = Path(__file__).parents[2] / "golden" / "chroma_radiance_object_info.json"


def test_object_info_equals_comfyui_080() -> None:
    golden = json.loads(GOLDEN.read_text())
    golden.pop("_about")
    assert {name: nodes.schemas[name].object_info() for name in golden} == golden


def test_empty_latent_is_rgb_zeros_at_full_size(node_ctx: NodeContext) -> None:
    (latent,) = empty_chroma_radiance_latent(node_ctx, width=48, height=32, batch_size=2)
    samples = torch.as_tensor(latent["samples"])
    assert samples.shape == (2, 3, 32, 48) and not samples.any()


def test_options_pass_the_model_through_and_check_the_tile_size(node_ctx: NodeContext) -> None:
    model = unet_file_handle("chroma-radiance-x0.safetensors", "0" * 64, "default")
    options = {"preserve_wrapper": True, "start_sigma": 1.0, "end_sigma": 0.0}
    assert chroma_radiance_options(node_ctx, model=model, nerf_tile_size=0, **options) == (model,)
    with pytest.raises(NodeInputError):
        chroma_radiance_options(node_ctx, model=model, nerf_tile_size=-2, **options)


def test_a_radiance_file_is_refused_by_name(tmp_path: Path) -> None:
    keys = {"double_blocks.0.img_attn.norm.key_norm.scale": (16,), "img_in.weight": (32, 64),
            "distilled_guidance_layer.in_proj.weight": (32, 64), "nerf_blocks.0.norm.scale": (8,)}
    save_file({k: torch.zeros(v) for k, v in keys.items()}, str(tmp_path / "radiance.safetensors"))
    with pytest.raises(ModelError, match="Chroma Radiance"):
        parse_chroma(TensorSource(tmp_path / "radiance.safetensors"))
