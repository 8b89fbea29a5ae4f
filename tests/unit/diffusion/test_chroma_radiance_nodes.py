"""Chroma Radiance's nodes: declared as ComfyUI 0.8.0 declares them (golden chroma_radiance_object_info.json), the
empty pixel-space latent (RGB zeros at full size) and ChromaRadianceOptions passing the model through."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from comfymesh.contracts.errors import NodeInputError
from comfymesh.contracts.handles import unet_file_handle
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
