"""A plugin that declares a node with two inputs of the same name."""

from typing import Any

from comfymesh.catalog.schema import Int, NodeSet, Output

nodes = NodeSet("imaging")


@nodes.define("BrokenTwice", inputs=[Int("x", 1), Int("x", 2)], outputs=[Output("INT")])
def twice(ctx: Any, x: int) -> tuple[int]:
    return (x,)
