"""What a running job has done so far, and the events that record it: every change of the job's or a node's
state is written to the job store together with its event, then published (`EventBus.record`)."""

from __future__ import annotations

import logging
from typing import Any

from comfymesh import trace
from comfymesh.contracts import wirejson
from comfymesh.contracts.errors import ComfymeshError
from comfymesh.contracts.events import EventType, JobStatus, NodeState
from comfymesh.contracts.failures import exception_from_failure, failure_record
from comfymesh.graph import Plan
from comfymesh.jobs import JobRecord
from comfymesh.logs import log_fields
from comfymesh.orchestrator.events import EventBus
from comfymesh.orchestrator.node_cache import Outputs, UiResults, cache_entry
from comfymesh.v1 import stage_pb2

log = logging.getLogger("comfymesh.orchestrator")


class JobRecorder:
    """One job's progress (its nodes running, finished and stored) and the writes that record it."""

    def __init__(self, job: JobRecord, bus: EventBus) -> None:
        self.job = job
        self.bus = bus
        self.store = bus.store
        self.plan: Plan | None = None  # set once the job's plan is signed
        # outputs of nodes stored in the artifact store (bindable across groups and cacheable)
        self.values: Outputs = {}
        self.finished: set[str] = set()
        self.running_nodes: set[str] = set()
        self.shown_running: set[str] = set()  # nodes the store shows running (kept across a call's retries)
        self.exported: set[str] = set()  # nodes whose outputs a stage call was asked to store
        self.ui: dict[str, dict[str, Any]] = {}  # UI results of output nodes, run or cached
        self.to_run: set[str] = set()
        self.cached_ui: UiResults = {}  # nodes served from cache, for `cached`
        self.started = False  # `started` recorded (the job's status is running)
        self.completed = False  # set once `completed` is recorded; nothing may fail the job after that
        self.progress: tuple[str, int, int] = ("", 0, 0)  # the last progress a stage sent: node, value, max
        self.stage_seconds: dict[str, float] = {}  # time in stage calls, by stage (the job's finished log line)
        self.failure: dict[str, Any] | None = None  # the failure recorded, if it failed

    async def record_start(self) -> None:
        """`started` and `cached` (the nodes served from cache), in one transaction."""
        await self.bus.record(self.store.start_job, self.job.id, self.cached_ui)
        self.started = True
        trace.mark("orchestrator.started")

    def completion(self) -> dict[str, Any]:
        """The `completed` event's data: the images come with it, so a client needs no second request."""
        images = [image for node_id in self.job.outputs_to_run
                  for image in (self.ui.get(node_id) or {}).get("images", [])]
        return {"outputs": self.job.outputs_to_run, "images": images}

    async def complete(self) -> None:
        await self.bus.record(self.store.set_status, self.job.id, JobStatus.COMPLETED, event=EventType.COMPLETED,
                              data=self.completion())
        trace.mark("orchestrator.completed")
        self.completed = True  # only once written: a cancel while waiting for the write still cancels

    async def fail(self, exc: ComfymeshError) -> None:
        """Record the job's failure: the failed node, the nodes it cut short back to pending, the error."""
        node_type = self.plan.nodes[exc.node_id].class_type if self.plan and exc.node_id in self.plan.nodes else ""
        error = self.failure = failure_record(exc, node_type)
        log.warning("job failed", extra=log_fields(job=self.job.id, **error))
        if not self.started:
            await self.bus.record(self.store.start_job, self.job.id, {})
        if exc.node_id:
            await self.bus.record(self.store.set_node_state, self.job.id, exc.node_id, NodeState.FAILED)
        if interrupted := self.shown_running - {exc.node_id}:
            # cut short by the failure, not failed themselves: like nodes never reached, not executed
            await self.bus.record(self.store.set_node_states, self.job.id, dict.fromkeys(interrupted),
                                  NodeState.PENDING)
        await self.bus.record(self.store.set_status, self.job.id, JobStatus.FAILED, error=error,
                              event=EventType.FAILED, data=error)

    async def record_retry(self, group_id: str, attempt: int, error: ComfymeshError) -> None:
        await self.bus.emit(self.job.id, EventType.RETRYING, data={"group": group_id, "attempt": attempt,
                                                                   "error": str(error)})

    def current_node(self, node_ids: list[str]) -> str:
        """The node a stage call was on: the one running, else the first not finished (the stage runs a
        group's nodes in order, so that is the one it had reached, or would start next on a retry)."""
        running = next((node_id for node_id in node_ids if node_id in self.running_nodes), "")
        return running or next((node_id for node_id in node_ids if node_id not in self.finished), "")

    async def on_stage_event(self, event: stage_pb2.StageEvent) -> None:
        """Record what a stage reports; a failure it reports is raised as the exception it stands for."""
        assert self.plan is not None
        if event.HasField("started"):
            node_id = event.started.node_id
            self.running_nodes.add(node_id)
            self.shown_running.add(node_id)
            await self.bus.record(self.store.set_node_state, self.job.id, node_id, NodeState.RUNNING,
                                  event=EventType.NODE_RUNNING,
                                  data={"class_type": self.plan.nodes[node_id].class_type})
        elif event.HasField("progress"):
            self.progress = (event.progress.node_id, event.progress.value, event.progress.max)
            await self.bus.emit(self.job.id, EventType.NODE_PROGRESS, event.progress.node_id,
                                {"value": event.progress.value, "max": event.progress.max})
        elif event.HasField("preview"):
            self.bus.emit_transient(self.job.id, EventType.NODE_PREVIEW, event.preview.node_id,
                                    {"format": event.preview.format, "data": event.preview.data})
        elif event.HasField("done"):
            self.running_nodes.discard(event.done.node_id)
            self.shown_running.discard(event.done.node_id)
            await self._node_done(event.done)
        elif event.HasField("failure"):
            raise exception_from_failure(event.failure)

    async def _node_done(self, done: stage_pb2.NodeDone) -> None:
        trace.mark("orchestrator.node_done")
        assert self.plan is not None
        node = self.plan.nodes[done.node_id]
        ui = wirejson.loads(done.ui_json) if done.ui_json else None
        self.finished.add(done.node_id)
        if ui:
            self.ui[done.node_id] = ui
        cache = None
        if done.node_id in self.exported:
            self.values[done.node_id] = list(done.outputs)
            cache = cache_entry(node, self.values[done.node_id], ui)
        # the job's last result completes it in the same write, not after the stream and groups unwind
        last = self.to_run <= self.finished
        await self.bus.record(self.store.finish_node, self.job.id, done.node_id, ui,
                              data={"class_type": node.class_type, "output": ui}, cache=cache,
                              completed=self.completion() if last else None)
        if last:
            trace.mark("orchestrator.completed")
            self.completed = True
