"""Drive one job: plan it, serve what the cache has, run its stage groups (each once the groups it reads
are done), and record its end. Each step lives in its own module: `planning`, `node_cache`,
`stage_request`, `stage_call` (retries, heartbeats) and `job_recorder` (state and events)."""

from __future__ import annotations

import asyncio
import functools

from comfymesh import trace
from comfymesh.artifacts import ArtifactStore
from comfymesh.catalog import Catalog
from comfymesh.config import Settings
from comfymesh.contracts.errors import ComfymeshError, TimeoutExceededError
from comfymesh.contracts.job_options import JobOptions
from comfymesh.files import FilesStore
from comfymesh.graph import Plan, StageGroup, plan_groups, plan_prompt, sign_plan
from comfymesh.jobs import JobRecord
from comfymesh.orchestrator.events import EventBus
from comfymesh.orchestrator.job_recorder import JobRecorder
from comfymesh.orchestrator.node_cache import cached_nodes, signatures
from comfymesh.orchestrator.planning import DigestPending, fingerprint_files, group_checkpoint, nodes_to_run
from comfymesh.orchestrator.preview_method import wants_previews
from comfymesh.orchestrator.replicas import ReplicaPool
from comfymesh.orchestrator.stage_call import GroupCall
from comfymesh.orchestrator.stage_request import stage_request
from comfymesh.orchestrator.waves import Waves, needs_waves
from comfymesh.v1 import stage_pb2


class JobRunner:
    """Runs one job to its end; raises nothing except cancellation (which the scheduler records). Building
    one raises InvalidJobOptions for a job whose stored options are invalid (the scheduler fails it alone)."""

    def __init__(self, job: JobRecord, settings: Settings, catalog: Catalog, store: ArtifactStore,
                 bus: EventBus, pool: ReplicaPool, plan: Plan | None = None,
                 files: FilesStore | None = None) -> None:
        """`plan`: the job's unsigned plan, where its submit just made one; `files`: a shared files store the
        input images are fingerprinted in (None: the data home's)."""
        self.job = job
        self.files = files
        self._unsigned = plan
        self.catalog = catalog
        self.artifacts = store
        self.pool = pool
        # checked again here: a job stored by an older version may hold any value (the scheduler fails it)
        self.options = JobOptions.from_stored(job.extra_data)
        self.timeouts = settings.timeout_policy.with_overall(self.options.timeout_s)
        self.previews = wants_previews(job.extra_data, settings.preview_method)
        self.plan: Plan | None = None
        self.recorder = JobRecorder(job, bus)
        self.calls = GroupCall(self.recorder, pool, self.timeouts, settings.retry_policy, self._request)

    @property
    def completed(self) -> bool:
        """Whether `completed` is recorded: nothing may fail or cancel the job after that."""
        return self.recorder.completed

    async def run(self) -> None:
        trace.mark("orchestrator.run")
        try:
            try:
                async with asyncio.timeout(self.timeouts.overall_s):
                    await self._execute()
            except TimeoutError:
                node_id = next(iter(self.recorder.running_nodes), "")
                raise TimeoutExceededError(
                    f"the job ran longer than its {self.timeouts.overall_s:g} s timeout"
                    + (f" while node {node_id} was running" if node_id else ""), node_id=node_id,
                    details="overall") from None
        except ComfymeshError as exc:
            await self.recorder.fail(exc)
            return
        if not self.recorder.completed:
            await self.recorder.complete()

    async def _execute(self) -> None:
        with trace.span("plan", {"job.id": self.job.id}):
            plan = self.plan = await self._signed_plan()
        recorder = self.recorder
        recorder.plan = plan
        trace.mark("orchestrator.planned")
        hits = await recorder.store.cache_get_many(signatures(plan))
        lookup = functools.partial(cached_nodes, plan, hits, self.artifacts)
        # a local store answers in microseconds: no worker-thread hop; a remote one (S3) goes off the loop
        values, cached = lookup() if self.artifacts.local else await asyncio.to_thread(lookup)
        recorder.values.update(values)
        to_run = recorder.to_run = nodes_to_run(plan, set(cached))
        # nodes not run: served from cache, or only feeding outputs that are
        skipped = [node_id for node_id in plan.order if node_id not in to_run]
        recorder.ui.update({node_id: ui for node_id, ui in cached.items() if ui})
        recorder.cached_ui = {node_id: cached.get(node_id) for node_id in skipped}
        if needs_waves(plan, self.catalog):
            recorder.to_run = set(plan.nodes)  # the job completes after its last wave, not at a node's end
            await recorder.record_start()
            await Waves(plan, self.catalog, recorder, self._run_groups).run(set(cached))
            return
        groups = {group.group_id: group for group in plan_groups(plan, to_run)}
        if len(groups) == 1:
            # the usual case (one stage does everything): no task and wait machinery around the call, and
            # `started` is written while the stage call travels (GroupCall)
            await self._run_group(next(iter(groups.values())))
            return
        await recorder.record_start()
        await self._run_groups(groups)

    async def _signed_plan(self) -> Plan:
        plan = self._unsigned or plan_prompt(self.job.prompt, self.job.outputs_to_run, self.catalog, sign=False)
        # only stages the outputs need: a node off every output's path never runs, so its stage may be down
        stages = {node.stage for node in plan.nodes.values()}
        versions = {stage: await self.pool.describe(stage) for stage in stages if stage in self.pool.replicas}
        versions.setdefault("any", "")
        if self.files is not None and not self.files.local:  # a network call per input file: off the loop
            await asyncio.to_thread(sign_plan, plan, versions, fingerprint_files(self.catalog, self.files))
            return plan
        try:  # digests already known: signed on the loop, in microseconds
            sign_plan(plan, versions, fingerprint_files(self.catalog, self.files, hash_files=False))
        except DigestPending:
            # a model file seen the first time is read whole (a 30 GiB file takes ~20 s): off the loop, which
            # keeps answering submits, status and other jobs meanwhile
            await asyncio.to_thread(sign_plan, plan, versions, fingerprint_files(self.catalog, self.files))
        return plan

    async def _run_groups(self, groups: dict[str, StageGroup]) -> None:
        """Run every group, each as soon as the groups it reads are done; the first failure stops the rest."""
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

    async def _run_group(self, group: StageGroup) -> None:
        assert self.plan is not None
        await self.calls.run(group, group_checkpoint(self.plan, group, self.recorder.values, self.catalog))

    def _request(self, group: StageGroup, attempt: int) -> stage_pb2.StageRequest:
        assert self.plan is not None
        return stage_request(self.job, self.plan, group, self.recorder.values, attempt, previews=self.previews,
                             user=self.options.user)
