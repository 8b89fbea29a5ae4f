"""ComfyUI's execution semantics, unit by unit: lazy inputs and the switch (what runs in which wave), lists
(map over the longest list, last item repeated, INPUT_IS_LIST), ExecutionBlocker (as a wire value, through a
node, at an output node) and the golden declarations of the logic and list nodes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from comfymesh.catalog import Catalog
from comfymesh.contracts.errors import NodeInputError
from comfymesh.contracts.values import ExecutionBlocker, blocked_value, blocker_of, list_items, list_value, tensors_in
from comfymesh.graph import plan_prompt, validate_prompt
from comfymesh.graph.lazy import active_nodes, next_wave
from comfymesh.orchestrator.local_nodes import LOCAL, MISSING, evaluate, local_entries
from comfymesh.stage.lists import ValueList, map_node, merge_ui
from comfymesh.v1 import common_pb2
from tests.catalogs import builtin_nodes
from tests.mesh import REPO

GOLDEN = REPO / "tests" / "golden" / "logic_object_info.json"


def catalog(tmp_path: Path) -> Catalog:
    from comfymesh.imaging import list_nodes  # noqa: F401  (declares RebatchImages)

    return Catalog(tmp_path, builtin_nodes().object_info() | local_entries())


def switch_prompt() -> dict[str, Any]:
    """1 decides; 2 (EmptyImage, red) feeds on_true, 3 -> 4 (EmptyImage -> ImageInvert) on_false."""
    return {
        "1": {"class_type": "PrimitiveBoolean", "inputs": {"value": True}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0xFF0000}},
        "3": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "4": {"class_type": "ImageInvert", "inputs": {"image": ["3", 0]}},
        "5": {"class_type": "ComfySwitchNode", "inputs": {"switch": ["1", 0], "on_true": ["2", 0],
                                                          "on_false": ["4", 0]}},
        "6": {"class_type": "ImageInvert", "inputs": {"image": ["5", 0]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "s"}},
    }


def test_the_switch_validates_and_plans_with_its_lazy_inputs(tmp_path: Path) -> None:
    cat = catalog(tmp_path)
    result = validate_prompt(switch_prompt(), cat)
    assert result.ok, result.response()
    plan = plan_prompt(result.prompt, result.outputs, cat)
    assert plan.nodes["5"].stage == "orchestrator"
    assert plan.nodes["7"].stage == "imaging"  # not the switch's: the orchestrator runs no output node
    assert cat.nodes["ComfySwitchNode"].lazy_inputs == {"on_true", "on_false"}


def test_waves_leave_the_untaken_branch_unplanned(tmp_path: Path) -> None:
    cat = catalog(tmp_path)
    result = validate_prompt(switch_prompt(), cat)
    plan = plan_prompt(result.prompt, result.outputs, cat)
    lazy = {"5": frozenset({"on_true", "on_false"})}
    held = {"5"}
    # first: nothing is asked yet, so only the switch's own input runs
    requested: dict[str, set[str]] = {}
    active = active_nodes(plan, lazy, requested, set())
    assert active == {"7", "6", "5", "1"}
    assert next_wave(plan, active, set(), held, lazy, requested) == {"1"}
    # the switch asks for on_true: its branch runs, the invert after the switch still waits
    requested = {"5": {"on_true"}}
    active = active_nodes(plan, lazy, requested, {"1"})
    assert active == {"7", "6", "5", "1", "2"}
    assert next_wave(plan, active, {"1"}, held, lazy, requested) == {"2"}
    # evaluated: the rest runs, and 3 and 4 never did
    done = {"1", "2", "5"}
    assert next_wave(plan, active_nodes(plan, lazy, requested, done), done, held, lazy, requested) == {"6", "7"}


def test_cached_nodes_stop_the_walk(tmp_path: Path) -> None:
    cat = catalog(tmp_path)
    result = validate_prompt(switch_prompt(), cat)
    plan = plan_prompt(result.prompt, result.outputs, cat)
    # 6 served from cache: nothing above it is needed
    assert active_nodes(plan, {"5": frozenset({"on_true", "on_false"})}, {}, {"6"}) == {"7", "6"}


def json_value(value: Any) -> common_pb2.Value:
    return common_pb2.Value(type="BOOLEAN", json=json.dumps(value))


def test_switch_check_lazy_status_as_comfyui() -> None:
    lazy = LOCAL["ComfySwitchNode"].check_lazy
    assert lazy({"switch": True, "on_true": None, "on_false": None}) == ["on_true"]
    assert lazy({"switch": json_value(False), "on_true": None, "on_false": None}) == ["on_false"]
    assert lazy({"switch": False, "on_true": None, "on_false": json_value(1)}) == []
    # one input not linked: the other, whatever the switch says
    assert lazy({"switch": False, "on_true": None}) == ["on_true"]
    with pytest.raises(NodeInputError, match="At least one of on_false or on_true"):
        lazy({"switch": True})
    a, b = json_value("a"), json_value("b")
    assert evaluate("ComfySwitchNode", {"switch": True, "on_true": a, "on_false": b}) == [a]
    assert evaluate("ComfySwitchNode", {"switch": json_value(False), "on_true": a, "on_false": b}) == [b]
    assert evaluate("ComfySwitchNode", {"switch": True, "on_false": b}) == [b]
    assert MISSING is ...
    blocked = blocked_value("IMAGE", ExecutionBlocker(None))
    assert evaluate("ComfySwitchNode", {"switch": True, "on_true": blocked}) == [blocked]


def test_wire_markers_round_trip() -> None:
    items = [common_pb2.Value(type="IMAGE", tensor=common_pb2.TensorRef(uri=f"u{i}", shape=[1, 2])) for i in range(3)]
    listed = list_value("IMAGE", items)
    assert list_items(listed) == items
    assert [ref.uri for ref in tensors_in(listed)] == ["u0", "u1", "u2"]
    assert blocker_of(listed) is None
    assert blocker_of(blocked_value("IMAGE", ExecutionBlocker("why"))) == ExecutionBlocker("why")
    # a plain JSON value is neither, even one that looks close
    plain = common_pb2.Value(type="STRING", json=json.dumps({"list": [1]}))
    assert list_items(plain) is None and blocker_of(plain) is None


def test_map_over_lists_longest_and_last_item_repeated() -> None:
    calls: list[dict[str, Any]] = []

    def call(args: dict[str, Any]) -> tuple[Any, ...]:
        calls.append(args)
        return (args["a"] * 10 + args["b"],)

    outputs, made = map_node(call, {"a": ValueList([1, 2, 3]), "b": ValueList([5]), "c": "x"}, 1, (False,), False)
    assert outputs == (ValueList([15, 25, 35]),) and made == 3
    assert [c["c"] for c in calls] == ["x", "x", "x"]
    # plain inputs: one plain call
    outputs, made = map_node(call, {"a": 1, "b": 2}, 1, (False,), False)
    assert outputs == (12,) and not isinstance(outputs[0], ValueList)
    # a list output's items are joined over the calls
    outputs, _ = map_node(lambda args: ([args["a"], args["a"]],), {"a": ValueList([1, 2])}, 1, (True,), False)
    assert outputs == (ValueList([1, 1, 2, 2]),)


def test_input_is_list_runs_once_with_lists() -> None:
    seen: list[dict[str, Any]] = []

    def call(args: dict[str, Any]) -> tuple[Any, ...]:
        seen.append(args)
        return ([sum(args["a"])],)

    outputs, made = map_node(call, {"a": ValueList([1, 2]), "b": 3}, 1, (True,), True)
    assert made == 1 and seen == [{"a": [1, 2], "b": [3]}] and outputs == (ValueList([3]),)


def test_a_blocker_skips_its_call_and_blocks_the_outputs() -> None:
    blocker = ExecutionBlocker(None)
    ran: list[Any] = []

    def call(args: dict[str, Any]) -> tuple[Any, ...]:
        ran.append(args)
        return (args["a"], args["a"])

    outputs, made = map_node(call, {"a": blocker}, 2, (False, False), False)
    assert outputs == (blocker, blocker) and made == 0 and not ran
    # over a list, only the blocked item's call is skipped
    outputs, made = map_node(lambda args: (args["a"] + 1,), {"a": ValueList([1, blocker, 3])}, 1, (False,), False)
    assert outputs == (ValueList([2, blocker, 4]),) and made == 2


def test_ui_results_of_several_calls_are_joined() -> None:
    assert merge_ui([{"images": [1]}, {"images": [2, 3]}]) == {"images": [1, 2, 3]}
    assert merge_ui([]) is None


def test_rebatch_images_regroups_every_image() -> None:
    from comfymesh.imaging.list_nodes import rebatch_images
    from comfymesh.stage.node import NodeContext

    ctx = NodeContext(job_id="j", node_id="1", class_type="RebatchImages", home=Path("."))
    batches = [np.full((3, 2, 2, 3), i, np.float32) for i in range(2)]  # six images: 0,0,0,1,1,1
    (out,) = rebatch_images(ctx, batches, [4])
    assert [b.shape[0] for b in out] == [4, 2]
    assert out[0][:, 0, 0, 0].tolist() == [0, 0, 0, 1] and out[1][:, 0, 0, 0].tolist() == [1, 1]


def test_golden_logic_and_list_entries(tmp_path: Path) -> None:
    golden = json.loads(GOLDEN.read_text())
    served = catalog(tmp_path).object_info()
    assert {name: served[name] for name in golden if name != "_about"} == \
        {name: entry for name, entry in golden.items() if name != "_about"}


def test_a_node_always_changed_is_never_cached_nor_what_follows_it(tmp_path: Path) -> None:
    from comfymesh.catalog.schema import Int, NodeSet, Output
    from comfymesh.orchestrator.planning import fingerprint_files

    extra = NodeSet("imaging")

    @extra.define("TestRandomColor", category="testing", inputs=[Int("seed", 0)], outputs=[Output("INT")],
                  always_changed=True)
    def random_color(ctx: Any, seed: int) -> tuple[int]:
        return (seed,)

    entries = builtin_nodes().object_info() | extra.object_info()
    cat = Catalog(tmp_path, entries)
    assert cat.nodes["TestRandomColor"].always_changed and not cat.nodes["EmptyImage"].always_changed
    assert "$always_changed" not in cat.object_info("TestRandomColor")["TestRandomColor"]
    prompt = {"1": {"class_type": "TestRandomColor", "inputs": {"seed": 3}},
              "2": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": ["1", 0]}},
              "3": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 5}},
              "4": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "a"}},
              "5": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "b"}}}
    result = validate_prompt(prompt, cat)
    assert result.ok, result.response()
    first, second = (plan_prompt(result.prompt, result.outputs, cat, fingerprint=fingerprint_files(cat))
                     for _ in range(2))
    changed = {n for n in first.nodes if first.nodes[n].signature != second.nodes[n].signature}
    assert changed == {"1", "2", "4"}
