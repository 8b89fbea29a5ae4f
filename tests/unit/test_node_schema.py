"""Node declarations: their `/object_info` form and the declarations the catalog refuses."""

from __future__ import annotations

from typing import Any

import pytest

from comfymesh.catalog.schema import (
    SOURCE_KEY,
    Combo,
    DeclarationError,
    Float,
    Hidden,
    Int,
    Link,
    NodeSchema,
    NodeSet,
    Output,
    Source,
    String,
)


def test_object_info_shapes_follow_comfyui() -> None:
    nodes = NodeSet("imaging")

    @nodes.define("Blend", category="image/x", display_name="Blend Images",
                  inputs=[Link("a", "IMAGE"), Link("b", "IMAGE", {}), Float("mix", 0.5, min=0.0, max=1.0, step=0.01),
                          Combo("mode", ["normal", "multiply"]), Combo("ckpt", Source("models/checkpoints"), {}),
                          String("label", "x", multiline=True, section="optional"), Hidden("prompt", "PROMPT")],
                  outputs=[Output("IMAGE"), Output("MASK", "alpha", is_list=True)], deprecated=False)
    def blend(ctx: Any, **inputs: Any) -> tuple[Any, ...]:
        return ()

    entry = nodes.object_info()["Blend"]
    assert entry["stage"] == "imaging"
    assert entry["input"]["required"] == {
        "a": ["IMAGE"], "b": ["IMAGE", {}], "mix": ["FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01}],
        "mode": [["normal", "multiply"]], "ckpt": [[{SOURCE_KEY: "models/checkpoints"}], {}]}
    assert entry["input"]["optional"] == {"label": ["STRING", {"default": "x", "multiline": True}]}
    assert entry["input"]["hidden"] == {"prompt": "PROMPT"}
    assert entry["input_order"] == {"required": ["a", "b", "mix", "mode", "ckpt"], "optional": ["label"],
                                    "hidden": ["prompt"]}
    assert (entry["output"], entry["output_name"], entry["output_is_list"]) == \
        (["IMAGE", "MASK"], ["IMAGE", "alpha"], [False, True])
    assert (entry["display_name"], entry["category"], entry["deprecated"]) == ("Blend Images", "image/x", False)
    assert nodes.impls["Blend"] is blend


@pytest.mark.parametrize(("schema", "message"), [
    (NodeSchema("Bad/Name", "imaging", (Link("a", "IMAGE"),), (Output("IMAGE"),)), "must be letters"),
    (NodeSchema("Twice", "imaging", (Link("a", "IMAGE"), Int("a", 1)), (Output("IMAGE"),)), "input 'a' twice"),
    (NodeSchema("NoOut", "imaging", (Link("a", "IMAGE"),)), "no outputs"),
    (NodeSchema("Combo", "imaging", (Combo("c", None),), (Output("INT"),)), "needs choices"),  # type: ignore[arg-type]
])
def test_bad_declarations_are_refused(schema: NodeSchema, message: str) -> None:
    with pytest.raises(DeclarationError, match=message):
        NodeSet("imaging").add(schema, lambda ctx: ())


def test_a_node_is_declared_once() -> None:
    nodes = NodeSet("imaging")
    schema = NodeSchema("Once", "imaging", (Link("a", "IMAGE"),), (Output("IMAGE"),))
    nodes.add(schema, lambda ctx, a: (a,))
    with pytest.raises(DeclarationError, match="declared twice"):
        nodes.add(schema, lambda ctx, a: (a,))
