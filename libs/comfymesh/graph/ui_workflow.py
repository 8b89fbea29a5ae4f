"""A UI workflow (what the ComfyUI frontend saves and `ui/templates/` holds) as the API prompt the frontend's
Run button would queue for it, from the `/object_info` declarations.

The rules are the frontend's (1.58.1 `graphToPrompt`): widget values by position (ui_widgets), a link into a
widget input replaces its value, PrimitiveNode values are written into the widgets they feed, Reroutes pass their
source through, notes vanish, muted nodes (mode 2) are left out with their links, bypassed ones (mode 4) hand
each consumer the input of the matching type, and subgraphs (`definitions.subgraphs`) are flattened into nodes
with ids `"<instance>:<inner>"`, their promoted widgets filled from the instance's `widgets_values`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from comfymesh.graph.ui_text import SAVE_NODES, replace_text
from comfymesh.graph.ui_widgets import expand_dynamic_prompt, widget_values

MUTED, BYPASSED = 2, 4
VIRTUAL = frozenset({"PrimitiveNode", "Reroute", "Note", "MarkdownNote"})
SUBGRAPH_INPUT, SUBGRAPH_OUTPUT = -10, -20
PACK_KEYS = ("cnr_id", "aux_id", "ver")


class UIWorkflowError(ValueError):
    """The workflow cannot be converted (a broken link, a cycle through reroutes or bypasses)."""


def is_ui_workflow(document: Any) -> bool:
    """A UI workflow has `nodes` and `links` lists; an API prompt is a map of node ids to `class_type`s."""
    return isinstance(document, dict) and isinstance(document.get("nodes"), list) and "links" in document


@dataclass
class _Link:
    origin: int | str
    origin_slot: int
    target: int | str
    target_slot: int
    type: str


@dataclass
class _Graph:
    """One level of the workflow: the root or a subgraph definition, with links by their target."""

    nodes: dict[str, dict[str, Any]]
    links: dict[int, _Link]
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> _Graph:
        links: dict[int, _Link] = {}
        for link in raw.get("links") or []:
            if isinstance(link, list):
                link_id, origin, origin_slot, target, target_slot, kind = link[:6]
            else:
                link_id, origin, origin_slot = link["id"], link["origin_id"], link["origin_slot"]
                target, target_slot, kind = link["target_id"], link["target_slot"], link.get("type", "*")
            links[int(link_id)] = _Link(origin, int(origin_slot), target, int(target_slot), str(kind))
        return cls({str(node["id"]): node for node in raw.get("nodes") or []}, links,
                   list(raw.get("inputs") or []), list(raw.get("outputs") or []))

    def link_into(self, node_id: str, slot: int) -> _Link | None:
        """The link feeding input `slot` of a node: the input's own link id, as the frontend reads it."""
        inputs = self.nodes[node_id].get("inputs") or []
        link_id = inputs[slot].get("link") if slot < len(inputs) else None
        return self.links.get(int(link_id)) if link_id is not None else None


@dataclass(frozen=True)
class _Place:
    """Where a node sits: its graph and the chain of subgraph instances above it (outermost first)."""

    graph: _Graph
    path: tuple[tuple[str, _Graph], ...] = ()

    def execution_id(self, node_id: str) -> str:
        return ":".join([*(instance for instance, _ in self.path), node_id])


Resolved = tuple[str, int] | tuple[None, Any]  # (origin execution id, slot) or (None, a promoted widget's value)


def _connects(a: str, b: str) -> bool:
    """LiteGraph's type check: wildcards, case-insensitive names and comma-separated unions."""
    if a in ("*", "") or b in ("*", ""):
        return True
    left, right = {t.strip().lower() for t in str(a).split(",")}, {t.strip().lower() for t in str(b).split(",")}
    return bool(left & right)


class _Converter:
    def __init__(self, workflow: Mapping[str, Any], object_info: Mapping[str, Any], rng: random.Random,
                 titles: Mapping[str, str]) -> None:
        self.info = object_info
        self.titles = titles
        self.rng = rng
        self.root = _Graph.parse(workflow)
        definitions = (workflow.get("definitions") or {}).get("subgraphs") or []
        self.subgraphs = {str(raw["id"]): _Graph.parse(raw) for raw in definitions}
        self.values: dict[tuple[int, str, str], Any] = {}  # (graph, node id, widget) → value set by primitives
        self.output: dict[str, dict[str, Any]] = {}

    def convert(self) -> dict[str, dict[str, Any]]:
        self._emit_graph(_Place(self.root))
        for node in self.output.values():  # links to nodes left out (muted, unknown) go, as in the frontend
            node["inputs"] = {name: value for name, value in node["inputs"].items()
                              if not (isinstance(value, list) and len(value) == 2 and value[0] not in self.output)}
        return self.output

    def _emit_graph(self, place: _Place) -> None:
        for node in place.graph.nodes.values():
            if node.get("type") == "PrimitiveNode":
                self._apply_primitive(place.graph, node)
        for node_id, node in place.graph.nodes.items():
            kind = str(node.get("type"))
            mode = node.get("mode", 0)
            # frontend 1.58.1 still flattens a bypassed subgraph instance that sits inside another subgraph (its
            # inner nodes are queued, unconsumed; flux1_dev_uso_reference_image_gen), but not one at the top
            nested_bypass = mode == BYPASSED and kind in self.subgraphs and bool(place.path)
            if kind in VIRTUAL or (mode in (MUTED, BYPASSED) and not nested_bypass):
                continue
            if kind in self.subgraphs:
                self._emit_graph(_Place(self.subgraphs[kind], (*place.path, (node_id, place.graph))))
            else:
                self._emit_node(place, node_id, node)

    def _apply_primitive(self, graph: _Graph, node: dict[str, Any]) -> None:
        """A PrimitiveNode writes its value into every widget its output feeds."""
        stored = node.get("widgets_values") or []
        if not stored:
            return
        for output in node.get("outputs") or []:
            for link_id in output.get("links") or []:
                link = graph.links.get(int(link_id))
                target = graph.nodes.get(str(link.target)) if link else None
                if link is None or target is None:
                    continue
                inputs = target.get("inputs") or []
                slot = inputs[link.target_slot] if link.target_slot < len(inputs) else {}
                name = (slot.get("widget") or {}).get("name") or slot.get("name")
                if name:
                    self.values[(id(graph), str(target["id"]), str(name))] = stored[0]

    def _emit_node(self, place: _Place, node_id: str, node: dict[str, Any]) -> None:
        kind = str(node["type"])
        declaration = self.info.get(kind) or {}
        inputs: dict[str, Any] = {}
        for name, (widget, value) in widget_values(declaration, node.get("widgets_values")).items():
            value = self.values.get((id(place.graph), node_id, name), value)
            if widget.dynamic_prompts and isinstance(value, str):
                value = expand_dynamic_prompt(value, self.rng)
            elif name == "filename_prefix" and kind in SAVE_NODES and isinstance(value, str):
                value = replace_text(value, self._widget_of)
            inputs[name] = {"__value__": value} if isinstance(value, list) else value
        for slot, entry in enumerate(node.get("inputs") or []):
            resolved = self._resolve_input(place, node_id, slot, set())
            if resolved is None:
                continue
            origin, value = resolved
            if origin is None:
                inputs[entry["name"]] = {"__value__": value} if isinstance(value, list) else value
            else:
                inputs[entry["name"]] = [origin, value]
        properties = node.get("properties") or {}
        meta = {"title": node.get("title") or self.titles.get(kind) or declaration.get("display_name") or kind}
        meta |= {key: properties[key] for key in PACK_KEYS if isinstance(properties.get(key), str)}
        self.output[place.execution_id(node_id)] = {"inputs": inputs, "class_type": kind, "_meta": meta}

    def _widget_of(self, ref: str, widget: str) -> tuple[bool, Any]:
        """A widget's value on the first node (root first, then subgraphs) whose S&R name, else title, is `ref`;
        the frontend gives every node but save nodes its type as S&R name."""
        graphs = [self.root, *self.subgraphs.values()]
        nodes = [(graph, node) for graph in graphs for node in graph.nodes.values()]

        def sr_name(node: Mapping[str, Any]) -> Any:
            properties = node.get("properties") or {}
            default = None if node.get("type") in SAVE_NODES else node.get("type")
            return properties.get("Node name for S&R", default)

        def title(node: Mapping[str, Any]) -> Any:
            kind = str(node.get("type"))
            return node.get("title") or self.titles.get(kind) or (self.info.get(kind) or {}).get("display_name")

        for key in (sr_name, title):
            for graph, node in nodes:
                if key(node) == ref:
                    own = widget_values(self.info.get(str(node.get("type"))) or {}, node.get("widgets_values"))
                    if widget not in own:
                        return False, None
                    return True, self.values.get((id(graph), str(node["id"]), widget), own[widget][1])
        return False, None

    def _resolve_input(self, place: _Place, node_id: str, slot: int, seen: set[Any],
                       kind: str | None = None) -> Resolved | None:
        key = (id(place.graph), place.path and place.path[-1][0], node_id, "in", slot)
        if key in seen:
            raise UIWorkflowError(f"node {place.execution_id(node_id)}: its input {slot} links back to itself")
        seen.add(key)
        link = place.graph.link_into(node_id, slot)
        if link is None:
            return None
        if link.origin == SUBGRAPH_INPUT and place.path:  # out through the instance's matching input
            instance, outer_graph = place.path[-1]
            outer = _Place(outer_graph, place.path[:-1])
            outer_slot = self._instance_slot(place.graph, outer_graph.nodes[instance], link.origin_slot)
            if outer_slot is not None and outer_graph.link_into(instance, outer_slot) is not None:
                return self._resolve_input(outer, instance, outer_slot, seen)
            return self._promoted_value(place.graph, outer_graph.nodes[instance], link.origin_slot)
        origin = str(link.origin)
        if origin not in place.graph.nodes:
            raise UIWorkflowError(f"node {place.execution_id(node_id)}: link from missing node {origin}")
        inputs = place.graph.nodes[node_id].get("inputs") or []
        target_type = kind or (str(inputs[slot].get("type", "*")) if slot < len(inputs) else "*")
        return self._resolve_output(place, origin, link.origin_slot, target_type, seen)

    def _resolve_output(self, place: _Place, node_id: str, slot: int, kind: str, seen: set[Any]) -> Resolved | None:
        key = (id(place.graph), place.path and place.path[-1][0], node_id, "out", slot)
        if key in seen:
            raise UIWorkflowError(f"node {place.execution_id(node_id)}: its output {slot} loops back")
        seen.add(key)
        node = place.graph.nodes[node_id]
        node_type = str(node.get("type"))
        if node.get("mode", 0) == MUTED:
            return None
        if node.get("mode", 0) == BYPASSED:
            through = self._bypass_slot(node, slot, kind)
            return None if through < 0 else self._resolve_input(place, node_id, through, seen)
        if node_type in self.subgraphs:
            inner = self.subgraphs[node_type]
            outputs = inner.outputs[slot] if slot < len(inner.outputs) else {}
            for link_id in outputs.get("linkIds") or []:
                link = inner.links.get(int(link_id))
                if link is not None and str(link.origin) in inner.nodes:
                    return self._resolve_output(_Place(inner, (*place.path, (node_id, place.graph))),
                                                str(link.origin), link.origin_slot, kind, seen)
            return None
        if node_type == "Reroute":
            return self._resolve_input(place, node_id, 0, seen, kind)
        if node_type in VIRTUAL:
            return None
        return place.execution_id(node_id), slot

    @staticmethod
    def _instance_slot(inner: _Graph, instance: Mapping[str, Any], slot: int) -> int | None:
        """The instance's input for the subgraph's input `slot`: saved instances may list only some of the
        subgraph's inputs, so they are matched by name (by position when unnamed)."""
        name = inner.inputs[slot].get("name") if slot < len(inner.inputs) else None
        entries = instance.get("inputs") or []
        for index, entry in enumerate(entries):
            if entry.get("name") == name:
                return index
        return slot if name is None and slot < len(entries) else None

    @staticmethod
    def _bypass_slot(node: Mapping[str, Any], slot: int, kind: str) -> int:
        """The input a bypassed node passes to output `slot`'s consumers: same index if its type fits, else the
        first input of exactly that type, else the first that connects."""
        inputs = [str(entry.get("type", "*")) for entry in node.get("inputs") or []]
        outputs = node.get("outputs") or []
        output_type = str(outputs[slot].get("type", "*")) if slot < len(outputs) else "*"
        if kind in ("*", ""):
            return slot if len(inputs) > slot else 0
        if slot < len(inputs) and _connects(inputs[slot], output_type) and _connects(inputs[slot], kind):
            return slot
        if kind in inputs:
            return inputs.index(kind)
        return next((i for i, t in enumerate(inputs) if _connects(t, output_type) and _connects(t, kind)), -1)

    def _promoted_value(self, inner: _Graph, instance: Mapping[str, Any], slot: int) -> Resolved | None:
        """An unlinked subgraph input: the instance's widget value for it, when the input feeds a widget."""
        promoted = [i for i in range(len(inner.inputs)) if self._interior_widget(inner, i) is not None]
        if slot not in promoted:
            return None
        stored = instance.get("widgets_values") or []
        index = promoted.index(slot)
        if isinstance(stored, list) and index < len(stored) and stored[index] is not None:
            return None, stored[index]
        node_id, name = self._interior_widget(inner, slot) or ("", "")
        node = inner.nodes[node_id]
        own = widget_values(self.info.get(str(node.get("type"))) or {}, node.get("widgets_values"))
        return None, self.values.get((id(inner), node_id, name), own[name][1] if name in own else None)

    def _interior_widget(self, inner: _Graph, slot: int) -> tuple[str, str] | None:
        """(node id, widget name) of the first widget a subgraph input feeds, as the frontend promotes it."""
        for link_id in inner.inputs[slot].get("linkIds") or []:
            link = inner.links.get(int(link_id))
            target = inner.nodes.get(str(link.target)) if link else None
            if link is None or target is None:
                continue
            inputs = target.get("inputs") or []
            entry = inputs[link.target_slot] if link.target_slot < len(inputs) else {}
            name = (entry.get("widget") or {}).get("name")
            if name:
                return str(target["id"]), str(name)
            if str(target.get("type")) in self.subgraphs:
                nested = self.subgraphs[str(target["type"])]
                if link.target_slot < len(nested.inputs) and self._interior_widget(nested, link.target_slot):
                    return str(target["id"]), str(entry.get("name"))
        return None


def ui_to_api(workflow: Mapping[str, Any], object_info: Mapping[str, Any], rng: random.Random | None = None,
              titles: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """The API prompt the frontend would queue for `workflow`. `rng` picks dynamic-prompt options; `titles`
    names untitled nodes (`_meta.title`) by type where the frontend shows its own translation of display names,
    otherwise the declared display name is used."""
    return _Converter(workflow, object_info, rng or random.Random(), titles or {}).convert()
