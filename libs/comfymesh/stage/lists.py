"""ComfyUI's map over lists and its ExecutionBlocker, as a stage runs one node.

A node whose output is declared a list (OUTPUT_IS_LIST) returns a Python list of items; the runtime holds
it as a `ValueList`. A node fed by a list runs once per item: the longest list sets the count and shorter
inputs repeat their last item; each output is collected into a `ValueList` (a list output's items are
joined). A node declared INPUT_IS_LIST runs once, with every input as a list. A call whose inputs hold an
`ExecutionBlocker` is not made: its outputs are that blocker. UI results of the calls are joined key by key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from comfymesh.contracts.values import ExecutionBlocker


class ValueList(list[Any]):
    """The items of a list output, as the runtime holds them between nodes."""


def _item(value: Any, index: int) -> Any:
    if isinstance(value, ValueList):
        return value[index] if index < len(value) else value[-1]
    return value


def _blocker(values: dict[str, Any]) -> ExecutionBlocker | None:
    return next((value for value in values.values() if isinstance(value, ExecutionBlocker)), None)


def call_count(inputs: dict[str, Any]) -> int:
    """How many times a node (not INPUT_IS_LIST) runs: its longest list input's length, else once."""
    lengths = [len(value) for value in inputs.values() if isinstance(value, ValueList)]
    return max(lengths) if lengths else 1


def map_node(call: Callable[[dict[str, Any]], tuple[Any, ...] | None], inputs: dict[str, Any],
             outputs: int, output_is_list: tuple[bool, ...], input_is_list: bool) -> tuple[tuple[Any, ...], int]:
    """Run `call` (inputs -> outputs, or None when it left its outputs empty) over `inputs` as ComfyUI maps a
    node over lists. Returns the node's outputs and how many calls were made (blocked calls not counted)."""
    if input_is_list:
        listed = {name: value if isinstance(value, ValueList) else ValueList([value]) for name, value in inputs.items()}
        blocker = next((item for value in listed.values() for item in value if isinstance(item, ExecutionBlocker)),
                       None)
        if blocker is not None:
            return (blocker,) * outputs, 0
        return _collect([call(listed)], outputs, output_is_list, single=True), 1
    count = call_count(inputs)
    results: list[tuple[Any, ...] | None] = []
    made = 0
    for index in range(count):
        item = {name: _item(value, index) for name, value in inputs.items()}
        blocker = _blocker(item)
        if blocker is not None:
            results.append((blocker,) * outputs)
            continue
        results.append(call(item))
        made += 1
    return _collect(results, outputs, output_is_list, single=count == 1 and not any(
        isinstance(value, ValueList) for value in inputs.values())), made


def _collect(results: list[tuple[Any, ...] | None], outputs: int, output_is_list: tuple[bool, ...],
             single: bool) -> tuple[Any, ...]:
    """Each output slot over the calls: a list output's items joined, a plain output one item a call; a node
    run once on plain inputs keeps its plain outputs."""
    collected: list[Any] = []
    for slot in range(outputs):
        is_list = slot < len(output_is_list) and output_is_list[slot]
        values = [result[slot] for result in results if result is not None and slot < len(result)]
        if is_list:
            items = ValueList()
            for value in values:
                if isinstance(value, ExecutionBlocker):
                    items.append(value)
                else:
                    items.extend(value)
            collected.append(items)
        elif single and len(values) == 1:
            collected.append(values[0])
        else:
            collected.append(ValueList(values))
    return tuple(collected)


def merge_ui(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The UI results of several calls of one output node, key by key (SaveImage over a list: every image)."""
    merged: dict[str, Any] = {}
    for ui in results:
        for key, value in ui.items():
            if isinstance(value, list):
                merged.setdefault(key, []).extend(value)
            else:
                merged[key] = value
    return merged or None


__all__ = ["ValueList", "call_count", "map_node", "merge_ui"]
