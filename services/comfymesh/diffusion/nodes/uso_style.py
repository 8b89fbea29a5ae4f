"""USOStyleReference (comfy_extras.nodes_model_patch): FLUX.1 USO's style reference. A USO projector
(ModelPatchLoader) maps a SigLIP CLIP_VISION_OUTPUT's layers -20, -11 and penultimate to style tokens that every
model call puts before the text tokens (families.flux's FluxCall `style`), at position ids zero.

In the MODEL handle's `model_patches`, each node appends `{"kind": "uso", "patch": MODEL_PATCH, "inputs":
stored bundle}`: the three hidden states [3, B, T, D] go to the artifact store (tensors never travel as JSON)
and the handle embeds the bundle's ref. A chain of these nodes puts the latest node's tokens first, as
ComfyUI's post_input patches, each prepending to the text, do.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from comfymesh.catalog.schema import Link, Output
from comfymesh.contracts.errors import ModelError, NodeInputError
from comfymesh.contracts.handles import HandleKind, ModelHandle
from comfymesh.contracts.values import embed_ref, embedded_ref
from comfymesh.diffusion.models.uso_projector import UsoProjector, stack_hidden_states, style_tokens
from comfymesh.diffusion.nodes.failures import node
from comfymesh.diffusion.nodes.handles import expect_handle
from comfymesh.diffusion.nodes.registry import nodes
from comfymesh.stage.node import NodeContext

MODULE = "comfy_extras.nodes_model_patch"
PATCHES = "model_patches"
KIND = "uso"


def _projector(ctx: NodeContext, model_patch: dict[str, Any]) -> UsoProjector:
    from comfymesh.diffusion.nodes.diffsynth import _patch_net  # the MODEL_PATCH loader and its cache entry

    net = _patch_net(ctx, model_patch)
    if not isinstance(net, UsoProjector):
        raise NodeInputError(f"{model_patch['name']} is not a USO style projector (uso-flux1-projector)",
                             node_id=ctx.node_id)
    return net


@nodes.define("USOStyleReference", category="advanced/model_patches/flux", python_module=MODULE,
    inputs=[Link("model", "MODEL"), Link("model_patch", "MODEL_PATCH"),
            Link("clip_vision_output", "CLIP_VISION_OUTPUT")],
    outputs=[Output("MODEL")],
    experimental=True,
)
@node
def uso_style_reference(ctx: NodeContext, model: ModelHandle, model_patch: dict[str, Any],
                        clip_vision_output: Any) -> tuple[ModelHandle]:
    from comfymesh.diffusion.nodes.diffsynth import patch_store

    model = expect_handle(ctx, model, HandleKind.MODEL)
    projector = _projector(ctx, model_patch)
    if not isinstance(clip_vision_output, dict) or "style_hidden_states" not in clip_vision_output:
        raise NodeInputError("USOStyleReference reads layers -20 and -11 of a SigLIP CLIP vision tower: this output "
                             "is not from one with 20 layers or more (sigclip_vision_patch14_384 has 27)",
                             node_id=ctx.node_id)
    stacked = stack_hidden_states(torch.as_tensor(clip_vision_output["style_hidden_states"]).float(),
                                  torch.as_tensor(clip_vision_output["penultimate_hidden_states"]).float())
    if stacked.shape[2] != projector.layout.siglip_tokens or stacked.shape[3] != projector.layout.siglip_width:
        raise NodeInputError(f"the {projector.layout.describe()} does not fit this CLIP vision output "
                             f"({stacked.shape[2]} tokens of width {stacked.shape[3]})", node_id=ctx.node_id)
    ref = patch_store().put_bundle({"hidden": np.ascontiguousarray(stacked.numpy())}, {"type": "USO_INPUTS"},
                                   "hidden")
    record = {"kind": KIND, "patch": model_patch, "inputs": embed_ref(ref)}
    return ({**model, PATCHES: [*model.get(PATCHES, []), record]},)


class StyledCall:
    """FLUX's model call with the handle's USO style tokens before the text; the tokens are made once per
    dtype (the projector's output depends on its input alone)."""

    def __init__(self, call: Any, applied: list[tuple[UsoProjector, torch.Tensor]]) -> None:
        self.call = call
        self.applied = applied
        self.tokens: dict[torch.dtype, torch.Tensor] = {}

    def style(self, dtype: torch.dtype) -> torch.Tensor:
        tokens = self.tokens.get(dtype)
        if tokens is None:  # the latest node's tokens first, as ComfyUI's chained post_input patches leave them
            tokens = torch.cat([style_tokens(net, hidden, dtype) for net, hidden in reversed(self.applied)], dim=1)
            self.tokens[dtype] = tokens
        return tokens

    def __call__(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor | None = None,
                 **extra: Any) -> torch.Tensor:
        out: torch.Tensor = self.call(x, t, ctx, y, style=self.style(x.dtype), **extra)
        return out


def styled_call(ctx: NodeContext, call: Any, records: list[dict[str, Any]]) -> StyledCall:
    """The model call with the USO records' tokens (bind_model_patches: the handle's patches all USO, FLUX)."""
    from comfymesh.diffusion.nodes.diffsynth import patch_store

    applied = []
    store = patch_store()
    for record in records:
        ref = embedded_ref(record["inputs"])
        if not store.exists(ref):
            raise ModelError("the CLIP vision output of a USOStyleReference node is no longer stored; run the "
                             "workflow again", node_id=ctx.node_id)
        tensors, _ = store.get_bundle(ref)
        applied.append((_projector(ctx, record["patch"]), torch.from_numpy(tensors["hidden"].copy())))
    return StyledCall(call, applied)
