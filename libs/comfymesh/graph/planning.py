"""What a validated prompt needs to run: the nodes its outputs depend on, in order, with cache signatures."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from graphlib import TopologicalSorter
from typing import Any

from comfymesh.catalog import ANY_STAGE, Catalog
from comfymesh.catalog.schema import ORCHESTRATOR_STAGE
from comfymesh.graph.dynamic import is_dynamic_path


@dataclass
class PlannedNode:
    """One node to run: its literals, its links and the signature that keys its cached outputs."""

    node_id: str
    class_type: str
    stage: str
    literals: dict[str, Any]
    links: dict[str, tuple[str, int]]
    outputs: tuple[str, ...]
    is_output: bool
    signature: str = ""


@dataclass
class Plan:
    nodes: dict[str, PlannedNode]
    order: list[str]
    outputs: list[str]
    consumers: dict[str, set[str]] = field(default_factory=dict)


# A node's signature may depend on something outside the prompt (a file's content): (class, inputs) -> text.
ExternalFingerprint = Callable[[str, dict[str, Any]], str]


def _signature(node: PlannedNode, upstream: dict[str, str], code_version: str, external: str) -> str:
    payload = {
        "class": node.class_type,
        "literals": node.literals,
        "links": {name: [upstream[source], slot] for name, (source, slot) in sorted(node.links.items())},
        "code": code_version,
        "external": external,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def plan_prompt(prompt: dict[str, dict[str, Any]], outputs: list[str], catalog: Catalog, *,
                code_versions: dict[str, str] | None = None,
                fingerprint: ExternalFingerprint | None = None, sign: bool = True) -> Plan:
    """Keep only what the outputs need, order it, and sign every node (seed included; `sign=False`
    skips the signatures when only the structure is wanted).

    The signature hashes class, literal inputs, upstream signatures, the stage's code version and any
    external fingerprint (file digests), so a rerun with the same inputs is fully served from cache.
    """
    needed: set[str] = set()
    stack = list(outputs)
    while stack:
        node_id = stack.pop()
        if node_id in needed:
            continue
        needed.add(node_id)
        stack.extend(str(value[0]) for value in prompt[node_id]["inputs"].values() if isinstance(value, list))

    nodes: dict[str, PlannedNode] = {}
    graph: dict[str, set[str]] = {}
    for node_id in needed:
        raw = prompt[node_id]
        definition = catalog.nodes[raw["class_type"]]
        links = {name: (str(value[0]), int(value[1])) for name, value in raw["inputs"].items()
                 if isinstance(value, list)}
        literals = {name: value for name, value in raw["inputs"].items()
                    if not isinstance(value, list)
                    and (name in definition.inputs or is_dynamic_path(name, definition.inputs))}
        nodes[node_id] = PlannedNode(node_id, raw["class_type"], definition.stage, literals, links,
                                     definition.outputs, node_id in outputs)
        graph[node_id] = {source for source, _ in links.values()}
    order = list(TopologicalSorter(graph).static_order())

    consumers: dict[str, set[str]] = {node_id: set() for node_id in nodes}
    for node_id in order:
        node = nodes[node_id]
        for source, _ in node.links.values():
            consumers[source].add(node_id)
        if node.stage == ANY_STAGE:
            # output nodes run where their input was produced
            # (the orchestrator's own nodes run no output node: theirs goes to imaging)
            producers = [nodes[source].stage for source, _ in node.links.values()
                         if nodes[source].stage != ORCHESTRATOR_STAGE]
            node.stage = producers[0] if producers else "imaging"
    plan = Plan(nodes=nodes, order=order, outputs=list(outputs), consumers=consumers)
    if sign:
        sign_plan(plan, code_versions, fingerprint)
    return plan


def sign_plan(plan: Plan, code_versions: dict[str, str] | None = None,
              fingerprint: ExternalFingerprint | None = None) -> None:
    """Set every node's signature, in order (each hashes its upstream signatures)."""
    for node_id in plan.order:
        node = plan.nodes[node_id]
        external = fingerprint(node.class_type, node.literals) if fingerprint else ""
        version = (code_versions or {}).get(node.stage, "")
        upstream = {source: plan.nodes[source].signature for source, _ in node.links.values()}
        node.signature = _signature(node, upstream, version, external)
