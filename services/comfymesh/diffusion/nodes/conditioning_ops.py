"""Conditioning arithmetic of ComfyUI's nodes.py: zeroing, averaging and concatenating CONDITIONING values,
and the area, mask, strength and timestep-range keys that the sampler's guidance weighs (`sampling.regions`)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from comfymesh.catalog.schema import MAX_RESOLUTION, Combo, Float, Int, Link, Output
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


def _set_values(ctx: NodeContext, conditioning: Conditioning, **values: Any) -> tuple[Conditioning]:
    """Every entry with `values` set in a copy of its extras (ComfyUI's conditioning_set_values)."""
    return ([[context, {**extras, **values}] for context, extras in _entries(ctx, conditioning, "conditioning")],)


_STRENGTH = Float("strength", 1.0, min=0.0, max=10.0, step=0.01)


@nodes.define("ConditioningSetArea", category="conditioning", display_name="Conditioning (Set Area)",
    inputs=[
        Link("conditioning", "CONDITIONING"),
        Int("width", 64, min=64, max=MAX_RESOLUTION, step=8),
        Int("height", 64, min=64, max=MAX_RESOLUTION, step=8),
        Int("x", 0, min=0, max=MAX_RESOLUTION, step=8),
        Int("y", 0, min=0, max=MAX_RESOLUTION, step=8),
        _STRENGTH,
    ],
    outputs=[Output("CONDITIONING")],
)
@node
def conditioning_set_area(ctx: NodeContext, conditioning: Conditioning, width: int, height: int, x: int, y: int,
                          strength: float) -> tuple[Conditioning]:
    # pixels to latent pixels, rounded down as ComfyUI does
    return _set_values(ctx, conditioning, area=[height // 8, width // 8, y // 8, x // 8], strength=float(strength),
                       set_area_to_bounds=False)


@nodes.define("ConditioningSetAreaPercentage", category="conditioning",
    display_name="Conditioning (Set Area with Percentage)",
    inputs=[
        Link("conditioning", "CONDITIONING"),
        Float("width", 1.0, min=0, max=1.0, step=0.01),
        Float("height", 1.0, min=0, max=1.0, step=0.01),
        Float("x", 0, min=0, max=1.0, step=0.01),
        Float("y", 0, min=0, max=1.0, step=0.01),
        _STRENGTH,
    ],
    outputs=[Output("CONDITIONING")],
)
@node
def conditioning_set_area_percentage(ctx: NodeContext, conditioning: Conditioning, width: float, height: float,
                                     x: float, y: float, strength: float) -> tuple[Conditioning]:
    return _set_values(ctx, conditioning, area=["percentage", float(height), float(width), float(y), float(x)],
                       strength=float(strength), set_area_to_bounds=False)


@nodes.define("ConditioningSetAreaStrength", category="conditioning",
    inputs=[Link("conditioning", "CONDITIONING"), _STRENGTH],
    outputs=[Output("CONDITIONING")],
)
@node
def conditioning_set_area_strength(ctx: NodeContext, conditioning: Conditioning, strength: float) -> tuple[Conditioning]:
    return _set_values(ctx, conditioning, strength=float(strength))


@nodes.define("ConditioningSetMask", category="conditioning", display_name="Conditioning (Set Mask)",
    inputs=[
        Link("conditioning", "CONDITIONING"),
        Link("mask", "MASK"),
        _STRENGTH,
        Combo("set_cond_area", ["default", "mask bounds"]),
    ],
    outputs=[Output("CONDITIONING")],
)
@node
def conditioning_set_mask(ctx: NodeContext, conditioning: Conditioning, mask: Any, strength: float,
                          set_cond_area: str) -> tuple[Conditioning]:
    m = torch.as_tensor(mask).float()
    if m.ndim < 3:
        m = m.unsqueeze(0)
    return _set_values(ctx, conditioning, mask=m, set_area_to_bounds=set_cond_area != "default",
                       mask_strength=float(strength))


@nodes.define("ConditioningSetTimestepRange", category="advanced/conditioning",
    inputs=[
        Link("conditioning", "CONDITIONING"),
        Float("start", 0.0, min=0.0, max=1.0, step=0.001),
        Float("end", 1.0, min=0.0, max=1.0, step=0.001),
    ],
    outputs=[Output("CONDITIONING")],
)
@node
def conditioning_set_timestep_range(ctx: NodeContext, conditioning: Conditioning, start: float,
                                    end: float) -> tuple[Conditioning]:
    return _set_values(ctx, conditioning, start_percent=float(start), end_percent=float(end))
