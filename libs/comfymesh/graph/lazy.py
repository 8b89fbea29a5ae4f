"""Which nodes of a plan run, and when, once some inputs are lazy (ComfyUI's lazy evaluation).

A node with lazy inputs says which of them it needs once its other inputs are known (check_lazy_status); a
lazy input it has not asked for is not evaluated, so the nodes that only feed it never run. A job with such
nodes runs in waves: each wave runs every node that is needed for sure and waits on no undecided node; then
the orchestrator decides and evaluates what it can (`orchestrator.local_nodes`) and plans the next wave.
"""

from __future__ import annotations

from collections.abc import Mapping

from comfymesh.graph.planning import Plan

# node id -> its lazy input names (only nodes that have some)
LazyInputs = Mapping[str, frozenset[str]]
# node id -> the lazy inputs it has asked for so far (a node absent has not been asked yet)
Requested = Mapping[str, set[str]]


def followed_links(plan: Plan, node_id: str, lazy: LazyInputs, requested: Requested) -> list[tuple[str, str]]:
    """(input name, source node) of the links a node needs now: every link but the lazy ones it has not
    asked for."""
    node = plan.nodes[node_id]
    skip = lazy.get(node_id, frozenset()) - requested.get(node_id, set())
    return [(name, source) for name, (source, _) in node.links.items() if name not in skip]


def active_nodes(plan: Plan, lazy: LazyInputs, requested: Requested, done: set[str]) -> set[str]:
    """The nodes the outputs need for sure now: up from the outputs through the links followed, stopping at
    nodes already done (run, or served from cache)."""
    active: set[str] = set()
    stack = list(plan.outputs)
    while stack:
        node_id = stack.pop()
        if node_id in active:
            continue
        active.add(node_id)
        if node_id not in done:
            stack.extend(source for _, source in followed_links(plan, node_id, lazy, requested))
    return active


def next_wave(plan: Plan, active: set[str], done: set[str], held: set[str], lazy: LazyInputs,
              requested: Requested) -> set[str]:
    """The active nodes a stage may run now: not done, not `held` (nodes the orchestrator evaluates), and
    with no held or undecided node upstream that is not done yet."""
    waiting: set[str] = set()
    wave: set[str] = set()
    for node_id in plan.order:
        if node_id not in active or node_id in done:
            continue
        sources = [source for _, source in followed_links(plan, node_id, lazy, requested)]
        undecided = node_id in lazy and node_id not in requested
        if node_id in held or undecided or any(source in waiting for source in sources):
            waiting.add(node_id)
        else:
            wave.add(node_id)
    return wave


__all__ = ["LazyInputs", "Requested", "active_nodes", "followed_links", "next_wave"]
