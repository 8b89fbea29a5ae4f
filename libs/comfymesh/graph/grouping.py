"""Contract neighbouring nodes of the same stage into one stage call, keeping groups acyclic."""

from __future__ import annotations

from dataclasses import dataclass, field

from comfymesh.graph.planning import Plan

# Stages whose fan-out branches should run as separate calls (cheap CPU work that parallelises);
# the diffusion stage shares one accelerator, so its branches stay in one call.
SPLIT_FANOUT_STAGES = frozenset({"imaging"})


@dataclass
class StageGroup:
    """Nodes run by one stage call, in topological order, and the groups it waits for."""

    group_id: str
    stage: str
    node_ids: list[str] = field(default_factory=list)
    depends_on: set[str] = field(default_factory=set)


def plan_groups(plan: Plan, to_run: set[str]) -> list[StageGroup]:
    """Group the nodes in `to_run` (the rest are served from cache) into stage calls."""
    groups: dict[str, StageGroup] = {}
    group_of: dict[str, str] = {}

    def ancestors(group_id: str) -> set[str]:
        seen: set[str] = set()
        stack = [group_id]
        while stack:
            for dep in groups[stack.pop()].depends_on:
                if dep not in seen:
                    seen.add(dep)
                    stack.append(dep)
        return seen

    for node_id in plan.order:
        if node_id not in to_run:
            continue
        node = plan.nodes[node_id]
        pred_groups = {group_of[source] for source, _ in node.links.values() if source in group_of}
        chosen = None
        for source, _ in node.links.values():
            candidate = group_of.get(source)
            if candidate is None or groups[candidate].stage != node.stage:
                continue
            fan_out = len([c for c in plan.consumers[source] if c in to_run]) > 1
            if fan_out and node.stage in SPLIT_FANOUT_STAGES:
                continue
            # joining `candidate` must not make it wait on a group that waits on it
            if any(candidate in ancestors(other) for other in pred_groups - {candidate}):
                continue
            chosen = candidate
            break
        if chosen is None:
            chosen = f"g{len(groups)}"
            groups[chosen] = StageGroup(chosen, node.stage)
        groups[chosen].node_ids.append(node_id)
        groups[chosen].depends_on |= pred_groups - {chosen}
        group_of[node_id] = chosen
    _absorb_sources(plan, to_run, groups, group_of)
    return list(groups.values())


def _absorb_sources(plan: Plan, to_run: set[str], groups: dict[str, StageGroup], group_of: dict[str, str]) -> None:
    """Fold a group that waits on nothing (e.g. an EmptyLatentImage) into the one group that uses it."""
    for group in list(groups.values()):
        if group.depends_on:
            continue
        users = {group_of[c] for n in group.node_ids for c in plan.consumers[n] if c in to_run} - {group.group_id}
        if len(users) != 1:
            continue
        target = groups[users.pop()]
        if target.stage != group.stage:
            continue
        target.node_ids[:0] = group.node_ids
        target.depends_on.discard(group.group_id)
        for node_id in group.node_ids:
            group_of[node_id] = target.group_id
        for other in groups.values():
            if group.group_id in other.depends_on:
                other.depends_on.discard(group.group_id)
                other.depends_on.add(target.group_id)
        del groups[group.group_id]
