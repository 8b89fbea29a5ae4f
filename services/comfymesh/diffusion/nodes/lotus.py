"""LotusConditioning (ComfyUI 0.8.0's comfy_extras/nodes_lotus.py): the fixed conditioning Lotus depth/normal
models are trained with.

Lotus uses a frozen text encoder on an empty prompt, so ComfyUI ships that result instead of running the
encoder. The same [1, 2, 1024] values are recorded here once as data (`data/lotus_conditioning.npy`,
float16: every value ComfyUI lists is exact in it), read when the node first runs.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from comfymesh.catalog.schema import Output
from comfymesh.diffusion.nodes.failures import node
from comfymesh.diffusion.nodes.registry import nodes
from comfymesh.stage.node import NodeContext

EMBEDDINGS = Path(__file__).parent / "data" / "lotus_conditioning.npy"


@cache
def lotus_embeddings() -> np.ndarray:
    """The recorded prompt embeddings, float32 [1, 2, 1024]."""
    return np.load(EMBEDDINGS, allow_pickle=False).astype(np.float32)


@nodes.define("LotusConditioning", category="conditioning/lotus", display_name=None,
              python_module="comfy_extras.nodes_lotus", inputs=[], outputs=[Output("CONDITIONING", "conditioning")],
              deprecated=False, experimental=False, api_node=False, output_matchtypes=None, output_tooltips=[None])
@node
def lotus_conditioning(ctx: NodeContext) -> tuple[list[Any]]:
    """LotusConditioning: one conditioning entry, the recorded embeddings with no extra keys."""
    return ([[torch.from_numpy(lotus_embeddings().copy()), {}]],)
