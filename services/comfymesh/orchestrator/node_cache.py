"""The node-output cache as a job sees it: the planned nodes it can serve, and the entry a node leaves."""

from __future__ import annotations

from typing import Any

from comfymesh.artifacts import ArtifactStore
from comfymesh.contracts.values import tensors_in, value_from_dict, value_to_dict
from comfymesh.graph import Plan, PlannedNode
from comfymesh.jobs import CacheEntry
from comfymesh.jobs.protocol import CachedOutputs
from comfymesh.v1 import common_pb2

Outputs = dict[str, list[common_pb2.Value]]
UiResults = dict[str, dict[str, Any] | None]


def signatures(plan: Plan) -> list[str]:
    """The cache keys of a plan's nodes (what to look up in the job store)."""
    return [plan.nodes[node_id].signature for node_id in plan.order]


def cached_nodes(plan: Plan, hits: dict[str, CachedOutputs], artifacts: ArtifactStore) -> tuple[Outputs, UiResults]:
    """Of the store's cache `hits`, the nodes whose stored tensors still exist: their outputs and UI results."""
    outputs: Outputs = {}
    ui: UiResults = {}
    for node_id in plan.order:
        hit = hits.get(plan.nodes[node_id].signature)
        if hit is None:
            continue
        values = [value_from_dict(item) for item in hit[0]]
        if not all(artifacts.exists(ref) for value in values for ref in tensors_in(value)):
            continue
        if plan.nodes[node_id].is_output and not hit[1]:
            continue
        outputs[node_id] = values
        ui[node_id] = hit[1]
    return outputs, ui


def cache_entry(node: PlannedNode, outputs: list[common_pb2.Value], ui: dict[str, Any] | None) -> CacheEntry:
    """What a finished node leaves in the cache, under its signature."""
    return CacheEntry(node.signature, node.class_type, [value_to_dict(value) for value in outputs], ui)
