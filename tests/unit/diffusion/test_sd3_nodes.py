"""SD3's nodes as ComfyUI 0.8.0 declares them (golden sd3_object_info.json), and CLIPTextEncodeSD3 refusing
a CLIP of another family (the node runs on SD3 CLIPs in tests/integration/test_sd3_mesh.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfymesh.contracts.errors import NodeInputError
from comfymesh.contracts.handles import HandleKind, checkpoint_handle
from comfymesh.diffusion.models.cache import get_model_cache
from comfymesh.diffusion.nodes import nodes
from comfymesh.stage.node import NodeContext

GOLDEN = Path(__file__).parents[2] / "golden" / "sd3_object_info.json"


def test_object_info_equals_comfyui_080() -> None:
    golden = json.loads(GOLDEN.read_text())
    golden.pop("_about")
    assert {name: nodes.schemas[name].object_info() for name in golden} == golden


def test_encode_sd3_refuses_another_familys_clip(node_ctx: NodeContext) -> None:
    name = "sd15.safetensors"
    digest = get_model_cache().get(node_ctx.home / "models" / "checkpoints" / name).digest
    clip = checkpoint_handle(HandleKind.CLIP, name, digest, loras=[], stop_at_clip_layer=None)
    with pytest.raises(NodeInputError, match="needs an SD3 CLIP"):
        nodes.impls["CLIPTextEncodeSD3"](node_ctx, clip=clip, clip_l="a", clip_g="a", t5xxl="a",
                                         empty_padding="none")
    with pytest.raises(NodeInputError, match="empty_padding"):
        nodes.impls["CLIPTextEncodeSD3"](node_ctx, clip=clip, clip_l="a", clip_g="a", t5xxl="a",
                                         empty_padding="zeros")
