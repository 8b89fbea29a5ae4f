"""Drive one job: plan, serve what the cache has, dispatch each group to a stage replica, record events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import grpc

from comfymesh import trace
from comfymesh.artifacts import ArtifactStore
from comfymesh.catalog import Catalog
from comfymesh.catalog.files import file_digest
from comfymesh.config import Settings
from comfymesh.contracts import wirejson
from comfymesh.contracts.errors import ComfymeshError, StageUnavailableError, TimeoutExceededError
from comfymesh.contracts.events import JobStatus
from comfymesh.contracts.failures import exception_from_failure
from comfymesh.contracts.values import TensorRef, value_from_dict, value_to_dict
from comfymesh.graph import Plan, StageGroup, plan_groups, plan_prompt, sign_plan
from comfymesh.jobs import CacheEntry, JobRecord
from comfymesh.jobs.options import JobOptions
from comfymesh.logs import log_fields
from comfymesh.orchestrator.events import EventBus
from comfymesh.orchestrator.replicas import ReplicaPool
from comfymesh.v1 import common_pb2, stage_pb2

log = logging.getLogger("comfymesh.orchestrator")
_UNAVAILABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN,
                grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL}


def fingerprint_files(catalog: Catalog) -> Any:
    """Cache signatures include the digest of every file a node reads (checkpoint, LoRA, input image)."""
    def fingerprint(class_type: str, literals: dict[str, Any]) -> str:
        parts = []
        for name, value in sorted(literals.items()):
            path = catalog.file_of(class_type, name, value)
            if path is not None:
                parts.append(f"{name}={file_digest(path)}")
        return ";".join(parts)
    return fingerprint


_draining: set[asyncio.Task[None]] = set()


def _drain(stream: Any) -> None:
    """Read a finished group's stream to its end in the background, so the call closes normally."""
    async def drain() -> None:
        with contextlib.suppress(Exception):
            async for _ in stream:
                pass

    task = asyncio.get_running_loop().create_task(drain())
    _draining.add(task)
    task.add_done_callback(_draining.discard)


class JobRunner:
    """Runs one job to its end; raises nothing except cancellation (which the scheduler records). Building
    one raises InvalidJobOptions for a job whose stored options are invalid (the scheduler fails it alone)."""

    def __init__(self, job: JobRecord, settings: Settings, catalog: Catalog, store: ArtifactStore,
                 bus: EventBus, pool: ReplicaPool, plan: Plan | None = None) -> None:
        """`plan`: the job's unsigned plan, where its submit just made one."""
        self.job = job
        self._unsigned = plan
        self.settings = settings
        self.catalog = catalog
        self.artifacts = store
        self.bus = bus
        self.store = bus.store
        self.pool = pool
        # outputs of nodes stored in the artifact store (bindable across groups and cacheable)
        self.values: dict[str, list[common_pb2.Value]] = {}
        self.finished: set[str] = set()
        self.running_nodes: set[str] = set()
        self.shown_running: set[str] = set()  # nodes the store shows running (kept across a call's retries)
        self.retry = settings.retry_policy
        # checked again here: a job stored by an older version may hold any value (the scheduler fails it)
        self.options = JobOptions.from_stored(job.extra_data)
        self.timeouts = settings.timeout_policy.with_overall(self.options.timeout_s)
        self.exported: set[str] = set()
        self.plan: Plan | None = None
        self.previews = bool(job.extra_data.get("preview_method", "auto") != "none")
        self.ui: dict[str, dict[str, Any]] = {}  # UI results of output nodes, run or cached
        self.to_run: set[str] = set()
        self.started = False  # `started` recorded (the job's status is running)
        self._cached_ui: dict[str, dict[str, Any] | None] = {}  # nodes served from cache, for `cached`
        self.completed = False  # set once `completed` is recorded; nothing may fail the job after that

    async def run(self) -> None:
        trace.mark("orchestrator.run")
        try:
            try:
                async with asyncio.timeout(self.timeouts.overall_s):
                    await self._execute()
            except TimeoutError:
                node_id = next(iter(self.running_nodes), "")
                raise TimeoutExceededError(
                    f"the job ran longer than its {self.timeouts.overall_s:g} s timeout"
                    + (f" while node {node_id} was running" if node_id else ""), node_id=node_id,
                    details="overall") from None
        except ComfymeshError as exc:
            error = {"type": exc.type, "node_id": exc.node_id, "message": exc.message,
                     "non_retryable": exc.non_retryable, "details": exc.details,
                     "node_type": self.plan.nodes[exc.node_id].class_type
                     if self.plan and exc.node_id in self.plan.nodes else ""}
            log.warning("job failed", extra=log_fields(job=self.job.id, **error))
            if not self.started:
                await self.bus.record(self.store.start_job, self.job.id, {})
            if exc.node_id:
                await self.bus.record(self.store.set_node_state, self.job.id, exc.node_id, "failed")
            if interrupted := self.shown_running - {exc.node_id}:
                # cut short by the failure, not failed themselves: like nodes never reached, not executed
                await self.bus.record(self.store.set_node_states, self.job.id, dict.fromkeys(interrupted),
                                      "pending")
            await self.bus.record(self.store.set_status, self.job.id, JobStatus.FAILED, error=error,
                                  event="failed", data=error)
            return
        if not self.completed:
            await self._complete()

    def _completion(self) -> dict[str, Any]:
        """The `completed` event's data: the images come with it, so a client needs no second request."""
        images = [image for node_id in self.job.outputs_to_run for image in (self.ui.get(node_id) or {}).get("images", [])]
        return {"outputs": self.job.outputs_to_run, "images": images}

    async def _complete(self) -> None:
        await self.bus.record(self.store.set_status, self.job.id, JobStatus.COMPLETED, event="completed",
                              data=self._completion())
        trace.mark("orchestrator.completed")
        self.completed = True  # only once written: a cancel while waiting for the write still cancels

    async def _execute(self) -> None:
        plan = self._unsigned or plan_prompt(self.job.prompt, self.job.outputs_to_run, self.catalog, sign=False)
        # only stages the outputs need: a node off every output's path never runs, so its stage may be down
        stages = {node.stage for node in plan.nodes.values()}
        versions = {stage: await self.pool.describe(stage) for stage in stages if stage in self.pool.replicas}
        versions.setdefault("any", "")
        sign_plan(plan, versions, fingerprint_files(self.catalog))
        self.plan = plan
        trace.mark("orchestrator.planned")
        # a local store answers in microseconds: no worker-thread hop; a remote one (S3) goes off the loop
        cached = self._cached_nodes(plan) if self.artifacts.local else await asyncio.to_thread(self._cached_nodes, plan)
        to_run = self.to_run = self._nodes_to_run(plan, set(cached))
        # nodes not run: served from cache, or only feeding outputs that are
        skipped = [node_id for node_id in plan.order if node_id not in to_run]
        self.ui.update({node_id: ui for node_id, ui in cached.items() if ui})
        self._cached_ui = {node_id: cached.get(node_id) for node_id in skipped}
        groups = {group.group_id: group for group in plan_groups(plan, to_run)}
        if len(groups) == 1:
            # the usual case (one stage does everything): no task and wait machinery around the call, and
            # `started` is written while the stage call travels (_stream_group)
            await self._run_group(next(iter(groups.values())))
            return
        await self._record_start()
        finished: set[str] = set()
        running: dict[asyncio.Task[None], str] = {}
        try:
            while len(finished) < len(groups):
                for group_id, group in groups.items():
                    if group_id not in finished and group_id not in running.values() \
                            and group.depends_on <= finished:
                        running[asyncio.create_task(self._run_group(group))] = group_id
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    group_id = running.pop(task)
                    task.result()
                    finished.add(group_id)
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    async def _record_start(self) -> None:
        """`started` and `cached` (the nodes served from cache), in one transaction."""
        await self.bus.record(self.store.start_job, self.job.id, self._cached_ui)
        self.started = True
        trace.mark("orchestrator.started")

    @staticmethod
    def _nodes_to_run(plan: Plan, cached: set[str]) -> set[str]:
        """Walk up from the outputs not served from cache, stopping at cached nodes."""
        to_run: set[str] = set()
        stack = [node_id for node_id in plan.outputs if node_id not in cached]
        while stack:
            node_id = stack.pop()
            if node_id in to_run or node_id in cached:
                continue
            to_run.add(node_id)
            stack.extend(source for source, _ in plan.nodes[node_id].links.values())
        return to_run

    def _exports(self, group: StageGroup, remaining: list[str]) -> list[str]:
        """Outputs worth storing: what other groups read, and everything but images (small, costly to
        recompute: conditioning, latents, model handles). Images inside a group stay in the stage's memory."""
        assert self.plan is not None
        exports = []
        for node_id in remaining:
            node = self.plan.nodes[node_id]
            leaves_group = any(c not in group.node_ids for c in self.plan.consumers[node_id])
            if leaves_group or not set(node.outputs) & {"IMAGE", "MASK"}:
                exports.append(node_id)
        return exports

    def _cached_nodes(self, plan: Plan) -> dict[str, dict[str, Any] | None]:
        """Nodes whose outputs (and stored tensors) the cache still holds, with their UI results."""
        cached: dict[str, dict[str, Any] | None] = {}
        hits = self.store.cache_get_many([plan.nodes[node_id].signature for node_id in plan.order])
        for node_id in plan.order:
            hit = hits.get(plan.nodes[node_id].signature)
            if hit is None:
                continue
            outputs = [value_from_dict(item) for item in hit[0]]
            if not all(self.artifacts.exists(TensorRef.from_proto(v.tensor)) for v in outputs
                       if v.WhichOneof("payload") == "tensor"):
                continue
            if plan.nodes[node_id].is_output and not hit[1]:
                continue
            self.values[node_id] = outputs
            cached[node_id] = hit[1]
        return cached

    def _request(self, group: StageGroup, attempt: int) -> stage_pb2.StageRequest:
        assert self.plan is not None
        remaining = [n for n in group.node_ids if n not in self.values]
        request = stage_pb2.StageRequest(
            job_id=self.job.id, group_id=group.group_id, attempt=attempt,
            prompt_json=wirejson.dumps(self.job.prompt),
            extra_pnginfo_json=wirejson.dumps(self.job.extra_data.get("extra_pnginfo") or {}),
            export_node_ids=self._exports(group, remaining), previews=self.previews,
            user=self.options.user)
        for node_id in remaining:
            node = self.plan.nodes[node_id]
            call = request.nodes.add(node_id=node_id, class_type=node.class_type,
                                     literal_inputs_json=wirejson.dumps(node.literals), is_output=node.is_output)
            for name, (source, slot) in node.links.items():
                call.links[name].node_id = source
                call.links[name].slot = slot
                if source not in remaining:
                    request.bound_inputs[f"{source}:{slot}"].CopyFrom(self.values[source][slot])
        return request

    async def _run_group(self, group: StageGroup) -> None:
        """Run a group on a replica; a lost replica or retryable failure moves the rest elsewhere."""
        tried: set[str] = set()
        error: ComfymeshError | None = None
        model = self._model_key(group)
        for attempt in range(1, self.retry.max_attempts + 1):
            replica = await self.pool.acquire(group.stage, avoid=tried, prefer_model=model)
            tried.add(replica.address)
            lost = False
            try:
                async with asyncio.timeout(self.timeouts.attempt_s):
                    await self._stream_group(replica.stub, self._request(group, attempt))
                if model:
                    replica.models.add(model)  # its model cache now holds the weights
                return
            except TimeoutError:
                node_id = self._current_node(group.node_ids)
                error = TimeoutExceededError(f"a {group.stage} stage call ran longer than its "
                                             f"{self.timeouts.attempt_s:g} s attempt timeout", node_id=node_id,
                                             details="attempt", non_retryable=False)
            except StageUnavailableError as exc:
                lost = True
                error = exc
            except ComfymeshError as exc:
                if exc.non_retryable:
                    raise
                error = exc
            finally:
                await self.pool.release(replica, failed=lost)
            self.running_nodes -= set(group.node_ids)
            log.warning("stage call failed, retrying", extra=log_fields(
                job=self.job.id, group=group.group_id, stage=group.stage, replica=replica.address,
                attempt=attempt, error=str(error)))
            await self.bus.emit(self.job.id, "retrying", data={"group": group.group_id, "attempt": attempt,
                                                              "error": str(error)})
            await asyncio.sleep(self.retry.backoff(attempt))
        assert error is not None
        raise error

    def _current_node(self, node_ids: list[str]) -> str:
        """The node a stage call was on: the one running, else the first not finished (the stage runs a
        group's nodes in order, so that is the one it had reached, or would start next on a retry)."""
        running = next((node_id for node_id in node_ids if node_id in self.running_nodes), "")
        return running or next((node_id for node_id in node_ids if node_id not in self.finished), "")

    def _model_key(self, group: StageGroup) -> str:
        """The checkpoint a group uses (loaded in it, or named by a handle it is given), for replica affinity."""
        assert self.plan is not None
        for node_id in group.node_ids:
            node = self.plan.nodes[node_id]
            if node.class_type == "CheckpointLoaderSimple":
                return str(node.literals.get("ckpt_name", ""))
            for source, slot in node.links.values():
                value = self.values.get(source, [])[slot:slot + 1]
                if value and value[0].WhichOneof("payload") == "json" and '"ckpt"' in value[0].json:
                    return str(json.loads(value[0].json).get("ckpt", ""))
        return ""

    async def _stream_group(self, stub: Any, request: stage_pb2.StageRequest) -> None:
        assert self.plan is not None
        self.exported.update(request.export_node_ids)
        # wait_for_ready: a replica that is restarting is waited for, not failed at once
        trace.mark("orchestrator.call_stage")
        call = stub.RunStage(request, wait_for_ready=True)
        stream = call.__aiter__()
        if not self.started:
            # one loop turn hands the request to gRPC, whose own threads send it; the job's `started` is
            # written meanwhile, still ahead of every event of the stage (read below, after it)
            await asyncio.sleep(0)
            try:
                await self._record_start()
            except BaseException:
                call.cancel()
                raise
        try:
            while True:
                try:
                    event = await asyncio.wait_for(stream.__anext__(), timeout=self.timeouts.heartbeat_s)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    call.cancel()
                    node_id = self._current_node([call.node_id for call in request.nodes])
                    raise TimeoutExceededError(
                        f"the stage sent no heartbeat for {self.timeouts.heartbeat_s:g} s"
                        + (f" while running node {node_id}" if node_id else ""), node_id=node_id,
                        details="heartbeat", non_retryable=False) from None
                await self._handle(event)
                if all(c.node_id in self.finished for c in request.nodes):
                    # the group's results are all in: the stream's end (the stage's trailers) is not waited for
                    _drain(stream)
                    return
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _UNAVAILABLE:
                raise StageUnavailableError(f"stage call lost: {exc.code().name} {exc.details()}") from exc
            raise ComfymeshError(f"stage call failed: {exc.code().name} {exc.details()}") from exc
        missing = [c.node_id for c in request.nodes if c.node_id not in self.finished]
        if missing:
            raise StageUnavailableError(f"stage call ended before nodes {', '.join(missing)} finished")

    async def _handle(self, event: stage_pb2.StageEvent) -> None:
        assert self.plan is not None
        kind = event.WhichOneof("event")
        if kind == "started":
            node_id = event.started.node_id
            self.running_nodes.add(node_id)
            self.shown_running.add(node_id)
            await self.bus.record(self.store.set_node_state, self.job.id, node_id, "running",
                                  event="node_running", data={"class_type": self.plan.nodes[node_id].class_type})
        elif kind == "progress":
            await self.bus.emit(self.job.id, "node_progress", event.progress.node_id,
                                {"value": event.progress.value, "max": event.progress.max})
        elif kind == "preview":
            self.bus.emit_transient(self.job.id, "node_preview", event.preview.node_id,
                                    {"format": event.preview.format, "data": event.preview.data})
        elif kind == "done":
            self.running_nodes.discard(event.done.node_id)
            self.shown_running.discard(event.done.node_id)
            await self._node_done(event.done)
        elif kind == "failure":
            raise exception_from_failure(event.failure)

    async def _node_done(self, done: stage_pb2.NodeDone) -> None:
        trace.mark("orchestrator.node_done")
        assert self.plan is not None
        node = self.plan.nodes[done.node_id]
        ui = json.loads(done.ui_json) if done.ui_json else None
        self.finished.add(done.node_id)
        if ui:
            self.ui[done.node_id] = ui
        cache = None
        if done.node_id in self.exported:
            self.values[done.node_id] = list(done.outputs)
            cache = CacheEntry(node.signature, node.class_type, [value_to_dict(v) for v in done.outputs], ui)
        # the job's last result completes it in the same write, not after the stream and groups unwind
        last = self.to_run <= self.finished
        await self.bus.record(self.store.finish_node, self.job.id, done.node_id, ui,
                              data={"class_type": node.class_type, "output": ui}, cache=cache,
                              completed=self._completion() if last else None)
        if last:
            trace.mark("orchestrator.completed")
            self.completed = True
