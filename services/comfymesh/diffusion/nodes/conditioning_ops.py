"""Conditioning arithmetic of ComfyUI's nodes.py: zeroing, averaging and concatenating CONDITIONING values.

Area, mask, strength and timestep-range conditioning are not offered: the sampler's guidance
(`sampling.guidance`) does not honour those keys yet, and a node whose effect is silently dropped is worse
than an unknown node."""

from __future__ import annotations

import logging
from typing import Any

import torch

from comfymesh.catalog.schema import Float, Link, Output
from comfymesh.contracts.errors import NodeInputError
from comfymesh.diffusion.nodes.failures import node
from comfymesh.diffusion.nodes.registry import nodes
from comfymesh.stage.node import NodeContext

log = logging.getLogger(__name__)
Conditioning = list[Any]


def _entries(ctx: NodeContext, conditioning: Conditioning, name: str) -> list[tuple[torch.Tensor, dict[str, Any]]]:
    if not conditioning:
        raise NodeInputError(f"{name} is empty: connect a text encoder's CONDITIONING", node_id=ctx.node_id)
    return [(torch.as_tensor(item[0]).float(), dict(item[1]) if len(item) > 1 and item[1] else {})
            for item in conditioning]


def _first_of(ctx: NodeContext, conditioning: Conditioning, node_name: str) -> tuple[torch.Tensor, dict[str, Any]]:
    entries = _entries(ctx, conditioning, "conditioning_from")
    if len(entries) > 1:
        log.warning("%s (node %s): conditioning_from has %d entries, only the first is used",
                    node_name, ctx.node_id, len(entries))
    return entries[0]


@nodes.define("ConditioningZeroOut", category="advanced/conditioning",
    inputs=[Link("conditioning", "CONDITIONING")],
    outputs=[Output("CONDITIONING")],
)
@node
def conditioning_zero_out(ctx: NodeContext, conditioning: Conditioning) -> tuple[Conditioning]:
    out = []
    for context, extras in _entries(ctx, conditioning, "conditioning"):
        if extras.get("pooled_output") is not None:
            extras["pooled_output"] = torch.zeros_like(torch.as_tensor(extras["pooled_output"]))
        out.append([torch.zeros_like(context), extras])
    return (out,)


@nodes.define("ConditioningAverage", category="conditioning",
    inputs=[
        Link("conditioning_to", "CONDITIONING"),
        Link("conditioning_from", "CONDITIONING"),
        Float("conditioning_to_strength", 1.0, min=0.0, max=1.0, step=0.01),
    ],
    outputs=[Output("CONDITIONING")],
)
@node
def conditioning_average(ctx: NodeContext, conditioning_to: Conditioning, conditioning_from: Conditioning,
                         conditioning_to_strength: float) -> tuple[Conditioning]:
    w = conditioning_to_strength
    cond_from, extras_from = _first_of(ctx, conditioning_from, "ConditioningAverage")
    pooled_from = extras_from.get("pooled_output")
    out = []
    for context, extras in _entries(ctx, conditioning_to, "conditioning_to"):
        # conditioning_from cut or zero-padded to this entry's token length
        t0 = cond_from[:, : context.shape[1]]
        if t0.shape[1] < context.shape[1]:
            t0 = torch.cat([t0, t0.new_zeros(1, context.shape[1] - t0.shape[1], context.shape[2])], dim=1)
        pooled_to = extras.get("pooled_output", pooled_from)
        if pooled_from is not None and pooled_to is not None:
            extras["pooled_output"] = torch.as_tensor(pooled_to) * w + torch.as_tensor(pooled_from) * (1.0 - w)
        elif pooled_from is not None:
            extras["pooled_output"] = pooled_from
        out.append([context * w + t0 * (1.0 - w), extras])
    return (out,)


@nodes.define("ConditioningConcat", category="conditioning", display_name="Conditioning (Concat)",
    inputs=[
        Link("conditioning_to", "CONDITIONING"),
        Link("conditioning_from", "CONDITIONING"),
    ],
    outputs=[Output("CONDITIONING")],
)
@node
def conditioning_concat(ctx: NodeContext, conditioning_to: Conditioning,
                        conditioning_from: Conditioning) -> tuple[Conditioning]:
    cond_from, _ = _first_of(ctx, conditioning_from, "ConditioningConcat")
    return ([[torch.cat((context, cond_from), 1), extras]
             for context, extras in _entries(ctx, conditioning_to, "conditioning_to")],)
