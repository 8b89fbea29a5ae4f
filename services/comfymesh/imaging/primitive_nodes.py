"""Primitive and string nodes (ComfyUI's `nodes_primitive` and `nodes_string`): values a graph links into
other nodes' widget inputs. They need no pixels; the imaging stage hosts them as the lightest stage."""

from __future__ import annotations

import sys

from comfymesh.catalog.schema import Boolean, Float, Int, Output, String
from comfymesh.imaging.nodes import define_v3
from comfymesh.stage.node import NodeContext

# ComfyUI bounds its Int and Float primitives by Python's sys.maxsize
_BOUND = sys.maxsize


@define_v3("PrimitiveInt", "nodes_primitive", "utils/primitive", display_name="Int",
           inputs=[Int("value", min=-_BOUND, max=_BOUND, control_after_generate=True)], outputs=[Output("INT")])
def primitive_int(ctx: NodeContext, value: int) -> tuple[int]:
    """PrimitiveInt: its widget's value."""
    return (value,)


@define_v3("PrimitiveFloat", "nodes_primitive", "utils/primitive", display_name="Float",
           inputs=[Float("value", min=-_BOUND, max=_BOUND, step=0.1)], outputs=[Output("FLOAT")])
def primitive_float(ctx: NodeContext, value: float) -> tuple[float]:
    """PrimitiveFloat: its widget's value."""
    return (value,)


@define_v3("PrimitiveBoolean", "nodes_primitive", "utils/primitive", display_name="Boolean",
           inputs=[Boolean("value")], outputs=[Output("BOOLEAN")])
def primitive_boolean(ctx: NodeContext, value: bool) -> tuple[bool]:
    """PrimitiveBoolean: its widget's value."""
    return (value,)


@define_v3("PrimitiveString", "nodes_primitive", "utils/primitive", display_name="String",
           inputs=[String("value", multiline=False)], outputs=[Output("STRING")])
def primitive_string(ctx: NodeContext, value: str) -> tuple[str]:
    """PrimitiveString: its widget's value."""
    return (value,)


@define_v3("PrimitiveStringMultiline", "nodes_primitive", "utils/primitive", display_name="String (Multiline)",
           inputs=[String("value", multiline=True)], outputs=[Output("STRING")])
def primitive_string_multiline(ctx: NodeContext, value: str) -> tuple[str]:
    """PrimitiveStringMultiline: its widget's value."""
    return (value,)


@define_v3("StringConcatenate", "nodes_string", "utils/string", display_name="Concatenate",
           inputs=[String("string_a", multiline=True), String("string_b", multiline=True),
                   String("delimiter", "", multiline=False)],
           outputs=[Output("STRING")])
def string_concatenate(ctx: NodeContext, string_a: str, string_b: str, delimiter: str) -> tuple[str]:
    """StringConcatenate: string_a, the delimiter, string_b."""
    return (delimiter.join((string_a, string_b)),)


@define_v3("StringReplace", "nodes_string", "utils/string", display_name="Replace",
           inputs=[String("string", multiline=True), String("find", multiline=True),
                   String("replace", multiline=True)],
           outputs=[Output("STRING")])
def string_replace(ctx: NodeContext, string: str, find: str, replace: str) -> tuple[str]:
    """StringReplace: every occurrence of `find` replaced (an empty `find` inserts between characters,
    as Python's str.replace does)."""
    return (string.replace(find, replace),)
