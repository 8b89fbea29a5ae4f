"""LotusConditioning: declared as ComfyUI 0.8.0 declares it, and the fixed conditioning it returns holds the
values nodes_lotus.py lists (its first, last and largest ones checked here, and their sum)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from comfymesh.diffusion.nodes import nodes
from comfymesh.stage.node import NodeContext

GOLDEN = Path(__file__).parents[2] / "golden" / "lotus_object_info.json"


def test_object_info_equals_comfyui_080() -> None:
    golden = json.loads(GOLDEN.read_text())
    golden.pop("_about")
    assert {name: nodes.schemas[name].object_info() for name in golden} == golden


def test_the_conditioning_is_lotus_fixed_prompt_embedding(tmp_path: Path) -> None:
    ctx = NodeContext(job_id="job", node_id="1", class_type="LotusConditioning", home=tmp_path)
    ((conditioning,),) = nodes.impls["LotusConditioning"](ctx)
    embeddings, extras = conditioning
    assert extras == {}
    assert embeddings.shape == (1, 2, 1024) and embeddings.dtype == torch.float32
    assert embeddings[0, 0, :3].tolist() == [-0.3134765625, -0.447509765625, -0.00823974609375]
    assert embeddings[0, 1, -2:].tolist() == [-0.67333984375, 1.5009765625]
    assert embeddings[0, 0].max().item() == 13.0234375
    assert abs(embeddings.double().sum().item() - -357.5014634132385) < 1e-9
    # each call gets its own tensor: a node downstream that edits it in place changes no other job's
    ((again,),) = nodes.impls["LotusConditioning"](ctx)
    assert again[0] is not embeddings and torch.equal(again[0], embeddings)
