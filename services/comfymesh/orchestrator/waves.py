"""A job whose plan has lazy inputs or nodes the orchestrator evaluates, run in waves (`graph.lazy`).

Each wave's stage groups run as any job's do; between waves the orchestrator asks its local nodes which lazy
inputs they need and evaluates those whose inputs are in. A lazy input never asked for is never evaluated,
so the nodes that only feed it never reach a stage and never show in the job's events. A stage node with
lazy inputs (none is declared yet) has all of them evaluated, which is what ComfyUI's default check does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from comfymesh.catalog import Catalog
from comfymesh.catalog.schema import ORCHESTRATOR_STAGE
from comfymesh.contracts.errors import ComfymeshError
from comfymesh.graph import Plan, StageGroup, plan_groups
from comfymesh.graph.lazy import active_nodes, followed_links, next_wave
from comfymesh.orchestrator.job_recorder import JobRecorder
from comfymesh.orchestrator.local_nodes import LOCAL, MISSING, Inputs, evaluate
from comfymesh.v1 import stage_pb2

RunGroups = Callable[[dict[str, StageGroup]], Awaitable[None]]


def needs_waves(plan: Plan, catalog: Catalog) -> bool:
    """Whether a plan has a node the orchestrator evaluates or a linked lazy input."""
    for node in plan.nodes.values():
        definition = catalog.get(node.class_type)
        if node.stage == ORCHESTRATOR_STAGE or (definition and definition.lazy_inputs & node.links.keys()):
            return True
    return False


class Waves:
    """Runs one job's plan wave by wave, recording local nodes as a stage's would be recorded."""

    def __init__(self, plan: Plan, catalog: Catalog, recorder: JobRecorder, run_groups: RunGroups) -> None:
        self.plan = plan
        self.recorder = recorder
        self.run_groups = run_groups
        self.lazy = {node_id: frozenset(definition.lazy_inputs & node.links.keys())
                     for node_id, node in plan.nodes.items()
                     if (definition := catalog.get(node.class_type)) and definition.lazy_inputs & node.links.keys()}
        self.held = {node_id for node_id, node in plan.nodes.items() if node.stage == ORCHESTRATOR_STAGE}
        # lazy inputs asked for so far; a stage node's are all asked for at once
        self.requested: dict[str, set[str]] = {node_id: set(names) for node_id, names in self.lazy.items()
                                               if node_id not in self.held}

    async def run(self, done: set[str]) -> None:
        """Run until no node the outputs need is left; `done`: the nodes served from cache."""
        while True:
            active = active_nodes(self.plan, self.lazy, self.requested, done)
            if await self._advance_local(active, done):
                continue
            wave = next_wave(self.plan, active, done, self.held, self.lazy, self.requested)
            if not wave:
                return
            await self.run_groups({group.group_id: group for group in plan_groups(self.plan, wave)})
            done |= wave

    async def _advance_local(self, active: set[str], done: set[str]) -> bool:
        """Decide or evaluate each local node whose inputs are in; whether any was."""
        progressed = False
        for node_id in self.plan.order:
            if node_id not in active or node_id in done or node_id not in self.held:
                continue
            sources = [source for _, source in followed_links(self.plan, node_id, self.lazy, self.requested)]
            if not all(source in done for source in sources):
                continue
            inputs = self._inputs(node_id)
            try:
                asked = set(LOCAL[self.plan.nodes[node_id].class_type].check_lazy(inputs)) \
                    if node_id in self.lazy else set()
                new = asked - self.requested.get(node_id, set())
                self.requested.setdefault(node_id, set()).update(asked)
                if not new:
                    await self._evaluate(node_id, inputs)
                    done.add(node_id)
            except ComfymeshError as exc:
                exc.node_id = exc.node_id or node_id
                raise
            progressed = True
        return progressed

    def _inputs(self, node_id: str) -> Inputs:
        """A local node's inputs: literals, the values of the links followed, None for a lazy input not
        evaluated; an input not linked is left out (MISSING)."""
        node = self.plan.nodes[node_id]
        inputs: Inputs = dict(node.literals)
        followed = {name for name, _ in followed_links(self.plan, node_id, self.lazy, self.requested)}
        for name, (source, slot) in node.links.items():
            inputs[name] = self.recorder.values[source][slot] if name in followed else None
        return inputs

    async def _evaluate(self, node_id: str, inputs: Inputs) -> None:
        node = self.plan.nodes[node_id]
        outputs = evaluate(node.class_type, {name: value for name, value in inputs.items()
                                             if value is not None and value is not MISSING})
        self.recorder.exported.add(node_id)
        await self.recorder.on_stage_event(stage_pb2.StageEvent(started=stage_pb2.NodeStarted(node_id=node_id)))
        done = stage_pb2.NodeDone(node_id=node_id)
        done.outputs.extend(outputs)
        await self.recorder.on_stage_event(stage_pb2.StageEvent(done=done))


__all__ = ["Waves", "needs_waves"]
