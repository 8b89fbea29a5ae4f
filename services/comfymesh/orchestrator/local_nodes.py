"""Nodes the orchestrator evaluates itself: they hold no tensors and decide what else runs.

ComfyUI's `ComfySwitchNode` has lazy inputs: which branch runs depends on its `switch` value, so it must be
decided before either branch reaches a stage. Evaluating it here costs no stage call, and its output is the
chosen input's value itself (a stored tensor's reference or a JSON value), so nothing is copied. Primitive and
string nodes stay on the imaging stage: they are cheap there, and a value they make is stored once either way.

A local node is a `check_lazy` (the lazy inputs it needs, given the values it has: ComfyUI's
check_lazy_status) and a `run` over wire values. An input that is not linked is `MISSING`; a linked lazy input
not evaluated yet is None.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from comfymesh.catalog.schema import ORCHESTRATOR_STAGE, Boolean, Link, NodeSet, Output
from comfymesh.contracts.errors import NodeInputError
from comfymesh.contracts.values import blocker_of
from comfymesh.v1 import common_pb2

MISSING: Any = ...  # an input the prompt does not link (ComfyUI passes Ellipsis the same way)
# V3's MatchType: the input takes any type and the output has the type of what it was given
MATCH_TYPE = "COMFY_MATCHTYPE_V3"
_SWITCH_TEMPLATE = {"template_id": "switch", "allowed_types": "*"}

Inputs = dict[str, Any]  # name -> literal, wire Value, None (lazy, not evaluated) or MISSING

local_nodes = NodeSet(ORCHESTRATOR_STAGE)


@dataclass(frozen=True)
class LocalNode:
    check_lazy: Callable[[Inputs], list[str]]
    run: Callable[[Inputs], list[common_pb2.Value]]


def literal(value: Any) -> Any:
    """A widget input's Python value, whether the prompt gave it literally or a node linked a JSON value."""
    if isinstance(value, common_pb2.Value):
        return json.loads(value.json) if value.WhichOneof("payload") == "json" and value.json else None
    return value


def _switch_lazy(inputs: Inputs) -> list[str]:
    on_false, on_true = inputs.get("on_false", MISSING), inputs.get("on_true", MISSING)
    if on_false is MISSING and on_true is MISSING:
        raise NodeInputError("At least one of on_false or on_true must be connected to Switch node")
    if on_false is MISSING:
        return ["on_true"] if on_true is None else []
    if on_true is MISSING:
        return ["on_false"] if on_false is None else []
    switch = literal(inputs["switch"])
    if switch and on_true is None:
        return ["on_true"]
    if not switch and on_false is None:
        return ["on_false"]
    return []


def _switch_run(inputs: Inputs) -> list[common_pb2.Value]:
    on_false, on_true = inputs.get("on_false", MISSING), inputs.get("on_true", MISSING)
    if on_true is MISSING:
        return [on_false]
    if on_false is MISSING:
        return [on_true]
    return [on_true if literal(inputs["switch"]) else on_false]


@local_nodes.define(
    "ComfySwitchNode", category="logic", display_name="Switch", python_module="comfy_extras.nodes_logic",
    inputs=[Boolean("switch"),
            Link("on_false", MATCH_TYPE, lazy=True, template=_SWITCH_TEMPLATE),
            Link("on_true", MATCH_TYPE, lazy=True, template=_SWITCH_TEMPLATE)],
    outputs=[Output(MATCH_TYPE, "output")],
    deprecated=False, experimental=True, api_node=False, output_matchtypes=["switch"], output_tooltips=[None])
def comfy_switch_node(inputs: Inputs) -> list[common_pb2.Value]:
    """ComfySwitchNode: on_true when `switch` holds, else on_false (the linked one when only one is)."""
    return _switch_run(inputs)


LOCAL: dict[str, LocalNode] = {"ComfySwitchNode": LocalNode(_switch_lazy, _switch_run)}


def evaluate(class_type: str, inputs: Inputs) -> list[common_pb2.Value]:
    """A local node's outputs; an ExecutionBlocker among its inputs blocks every output, as on a stage."""
    for value in inputs.values():
        if isinstance(value, common_pb2.Value) and blocker_of(value) is not None:
            return [value]
    return LOCAL[class_type].run(inputs)


def local_entries() -> dict[str, dict[str, Any]]:
    """The local nodes' declarations, in the form the stages' Describe sends (merged into the catalog)."""
    return local_nodes.object_info()


__all__ = ["LOCAL", "MATCH_TYPE", "MISSING", "LocalNode", "evaluate", "literal", "local_entries", "local_nodes"]
