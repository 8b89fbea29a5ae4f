"""UI → API conversion rules the frontend comparison (tests/e2e/test_ui_workflow.py) cannot pin down: muted
nodes and their links, dynamic prompts (random in the browser), widgets a saved node does not store."""

from __future__ import annotations

import datetime
import random
from typing import Any

from comfymesh.graph.ui_text import replace_text
from comfymesh.graph.ui_widgets import expand_dynamic_prompt, widgets_of
from comfymesh.graph.ui_workflow import is_ui_workflow, ui_to_api

INFO: dict[str, Any] = {
    "Source": {"input": {"required": {"seed": ["INT", {"default": 7}], "text": ["STRING", {"dynamicPrompts": True}]}},
               "input_order": {"required": ["seed", "text"]}, "display_name": "Source", "output": ["IMAGE"]},
    "Sink": {"input": {"required": {"image": ["IMAGE"], "mode": [["a", "b"]]}}, "display_name": "Sink Node"},
    "Load": {"input": {"required": {"image": [["x.png"], {"image_upload": True}], "channel": [["alpha", "red"]]}},
             "display_name": "Load"},
}


def node(node_id: int, kind: str, values: list[Any], inputs: list[dict[str, Any]] | None = None,
         mode: int = 0) -> dict[str, Any]:
    return {"id": node_id, "type": kind, "mode": mode, "inputs": inputs or [], "widgets_values": values}


def test_a_muted_node_is_left_out_with_the_links_from_it() -> None:
    workflow = {"nodes": [node(1, "Source", [3, "fixed", "cat"], mode=2),
                          node(2, "Sink", [], [{"name": "image", "type": "IMAGE", "link": 1}])],
                "links": [[1, 1, 0, 2, 0, "IMAGE"]]}
    assert is_ui_workflow(workflow) and not is_ui_workflow({"1": {"class_type": "Sink", "inputs": {}}})
    assert ui_to_api(workflow, INFO) == {"2": {"inputs": {"mode": "a"}, "class_type": "Sink",
                                               "_meta": {"title": "Sink Node"}}}


def test_seed_companion_and_dynamic_prompts() -> None:
    workflow = {"nodes": [node(1, "Source", [3, "randomize", "a {red|blue} cat // note"])], "links": []}
    inputs = ui_to_api(workflow, INFO, random.Random(1))["1"]["inputs"]
    assert inputs["seed"] == 3 and inputs["text"] in ("a red cat ", "a blue cat ")
    seen = {expand_dynamic_prompt("{a|{b|c}} \\{x\\}", random.Random(i)) for i in range(60)}
    assert seen == {"a {x}", "b {x}", "c {x}"}


def test_upload_button_comes_last_and_missing_values_take_defaults() -> None:
    assert [w.name for w in widgets_of(INFO["Load"])] == ["image", "channel", None]
    workflow = {"nodes": [node(1, "Load", ["in.png"])], "links": []}
    assert ui_to_api(workflow, INFO)["1"]["inputs"] == {"image": "in.png", "channel": "alpha"}


def test_save_node_text_replacement_with_a_fixed_clock() -> None:
    moment = datetime.datetime(2026, 3, 4, 5, 6, 7)
    values = {("Latent", "width"): 512, ("Prompt", "text"): "a/b:c", ("Flag", "on"): True}

    def lookup(node: str, widget: str) -> tuple[bool, Any]:
        return ((node, widget) in values, values.get((node, widget)))

    text = "%date:yyyy-MM-dd hh-mm-ss%_%date:yy M d h m s%_%Latent.width%_%Prompt.text%_%Flag.on%_%No.x%_%width%"
    assert replace_text(text, lookup, moment) == "2026-03-04 05-06-07_26 3 4 5 6 7_512_a_b_c_true_%No.x%_%width%"
