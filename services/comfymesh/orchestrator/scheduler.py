"""The queue: accepted jobs are persisted first, then run by priority, a bounded number at once."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from comfymesh import trace
from comfymesh.artifacts import ArtifactStore
from comfymesh.catalog import INPUT_IMAGES, Catalog
from comfymesh.catalog.files import resolve_image_name, split_image_name
from comfymesh.catalog.model_folders import model_folders
from comfymesh.config import Settings
from comfymesh.contracts.errors import ComfymeshError, StageUnavailableError, TimeoutExceededError
from comfymesh.contracts.events import EventType, JobStatus
from comfymesh.contracts.failures import failure_record
from comfymesh.files import BadKey, open_files, safe_key
from comfymesh.graph import Plan, plan_prompt, validate_prompt
from comfymesh.graph.limits import resource_limits
from comfymesh.jobs import JobRecord, UnreadableJob
from comfymesh.jobs.options import STORED_KEY, InvalidJobOptions, JobOptions
from comfymesh.jobs.protocol import AsyncJobStore, JobExists, LeaseLost, PeriodicTask
from comfymesh.jobs.sqlite_backend import SqliteJobStore
from comfymesh.logs import log_fields
from comfymesh.orchestrator.events import EventBus
from comfymesh.orchestrator.job_log import log_finished
from comfymesh.orchestrator.node_catalog import NodeCatalog
from comfymesh.orchestrator.preview_method import preview_method_error
from comfymesh.orchestrator.replicas import ReplicaPool
from comfymesh.orchestrator.retention import BlockingCache, RetentionPolicy, collect
from comfymesh.orchestrator.runner import JobRunner
from comfymesh.orchestrator.webhooks import WebhookSender, output_images, webhook_secret
from comfymesh.outbound import OutboundPolicy

log = logging.getLogger("comfymesh.orchestrator")
_INLINE_VALIDATION_NODES = 64


class Submission:
    """The outcome of a submit: a job id, or ComfyUI's error body (nothing persisted then)."""

    def __init__(self, job_id: str = "", number: float = 0, error: dict[str, Any] | None = None,
                 node_errors: dict[str, Any] | None = None, existing: bool = False, queue_full: bool = False,
                 idempotency_conflict: bool = False) -> None:
        self.queue_full = queue_full
        self.idempotency_conflict = idempotency_conflict
        self.job_id = job_id
        self.number = number
        self.error = error
        self.node_errors = node_errors or {}
        self.existing = existing


class Scheduler:
    def __init__(self, settings: Settings, store: AsyncJobStore, pool: ReplicaPool) -> None:
        self.settings = settings
        self.store = store
        self.pool = pool
        self.bus = EventBus(store)
        # the shared files store (outputs, uploads) retention expires and LoadImage reads; None: the data home
        self.files = open_files(settings.files, settings.files_options()) if settings.files_url else None
        self.catalog = Catalog(settings.home, {}, model_folders(settings), self.files)
        self.node_catalog = NodeCatalog(self.catalog, pool, settings.home / "cache" / "node_catalog.json")
        self.artifacts = ArtifactStore(settings.artifacts)
        self.running: dict[str, asyncio.Task[None]] = {}
        self.runners: dict[str, JobRunner] = {}  # the running jobs' progress (the cluster view)
        self._wake = asyncio.Event()
        self._submit_lock = asyncio.Lock()
        self._user_cancelled: set[str] = set()
        self._gc: asyncio.Task[None] | None = None
        self.outbound = OutboundPolicy.parse(settings.outbound_allow)
        self.webhooks = WebhookSender(None, self.bus, self.outbound)  # its secret is loaded by `recover`
        self._limits = resource_limits(settings.max_pixels, settings.max_batch, settings.max_steps)
        self._recovered = False  # jobs start straight from submit only once recovery has re-queued old ones
        self._expiring: set[str] = set()
        self._plans: dict[str, Plan] = {}  # jobs started from their submit: the plan made there
        self._unrecordable: set[str] = set()  # failed jobs whose failure could not be written: never retried
        self._lost: set[str] = set()  # jobs whose lease was lost or handed back: their tasks stop quietly
        self._leases: asyncio.Task[None] | None = None
        self._redelivery: asyncio.Task[bool] | None = None

    def _custom_checks(self) -> dict[tuple[str, str], Any]:
        home = self.settings.home
        files = self.files

        def image_exists(value: Any) -> str | None:
            if files is not None and not files.local:  # uploads live in the shared store
                folder, name = split_image_name(str(value))
                try:
                    found = files.exists(safe_key(folder, "", name))
                except BadKey:
                    found = False
                return None if found else f"Invalid image file: {value}"
            path = resolve_image_name(home, str(value))
            return None if path is not None and path.is_file() else f"Invalid image file: {value}"

        # an input image may also be `sub/x.png` or `x.png [output]`, beyond the input folder's listing;
        # an upload widget with no listed choices (LoadImageOutput's) names its file the same way
        return {(node.name, spec.name): image_exists for node in self.catalog.nodes.values()
                for spec in node.inputs.values() if spec.source == INPUT_IMAGES or spec.options.get("image_upload")}

    async def submit(self, prompt: Any, extra_data: dict[str, Any], options: JobOptions, *, client_id: str = "",
                     targets: list[str] | None = None) -> Submission:
        """Validate and persist a job (`options` were validated on construction)."""
        job_id, user = options.job_id, options.user
        await self.node_catalog.knows(_class_types(prompt))
        async with self._submit_lock:
            # small lookups run on the loop (a thread hop costs more than they do)
            if job_id:
                existing = await self.store.get_job(job_id)
                if existing is not None:
                    return Submission(existing.id, existing.number, existing=True)
            if options.idempotency_key:
                made = await self.store.idempotent_job(user, options.idempotency_key)
                if made is not None and made[1] != options.request_digest:
                    return Submission(idempotency_conflict=True)
                existing = await self.store.get_job(made[0]) if made is not None else None
                if existing is not None:
                    return Submission(existing.id, existing.number, existing=True)
            if await self.store.count_jobs(JobStatus.QUEUED) >= self.settings.max_queue:
                return Submission(queue_full=True)
            # ComfyUI's counter moves even when validation then fails (a sequence when orchestrators share it)
            counter = await self.store.next_number()
            number = options.priority if options.priority is not None else (-counter if options.front else counter)
            if error := preview_method_error(extra_data):
                return Submission(error=error, number=number)
            validate = functools.partial(validate_prompt, prompt, self.catalog, targets=targets,
                                         custom_checks=self._custom_checks(), node_check=self._limits)
            # typical prompts validate in well under a millisecond; only big ones go to a worker thread
            small = isinstance(prompt, dict) and len(prompt) <= _INLINE_VALIDATION_NODES
            with trace.span("validate", {"prompt.nodes": len(prompt) if isinstance(prompt, dict) else 0}):
                result = validate() if small else await asyncio.to_thread(validate)
            trace.mark("orchestrator.validated")
            if not result.ok:
                return Submission(error=result.error, node_errors=result.node_errors, number=number)
            job_id = job_id or str(uuid.uuid4())
            plan = plan_prompt(result.prompt, result.outputs, self.catalog, sign=False)
            nodes = {node_id: plan.nodes[node_id].class_type for node_id in plan.order}
            extra = {key: value for key, value in extra_data.items() if key != STORED_KEY}  # ours alone
            if client_id:
                extra["client_id"] = client_id
            stored = options.stored()
            if parent := trace.current_traceparent():  # the job's run, maybe on another orchestrator, joins this trace
                stored[trace.STORED_TRACEPARENT] = parent
            if stored:
                extra[STORED_KEY] = stored
            idempotency = (user, options.idempotency_key, options.request_digest) if options.idempotency_key else None
            try:
                await self.bus.record(self.store.add_job, job_id, number, result.prompt, extra, client_id,
                                      result.outputs, nodes, submitted=prompt, idempotency=idempotency)
            except JobExists as exc:  # another orchestrator stored the same id or idempotency key first
                made = await self.store.idempotent_job(user, options.idempotency_key) \
                    if options.idempotency_key else None
                if made is not None and made[1] != options.request_digest:
                    return Submission(idempotency_conflict=True)
                existing = await self.store.get_job(exc.job_id)
                if existing is None:
                    raise
                return Submission(existing.id, existing.number, existing=True)
        trace.mark("orchestrator.persisted")
        log.info("job accepted", extra=log_fields(job=job_id, nodes=len(nodes), number=number, user=user))
        if self._recovered:
            # start it now, ahead of the reply: the reply is off the job's critical path, the start is not
            self._plans[job_id] = plan  # its runner takes the plan made here instead of making it again
            await self._dispatch()
            await asyncio.sleep(0)  # one loop turn: the new job's task plans it and calls its stage first
            self._plans.pop(job_id, None)  # not started now (no room): planned again when it starts
        else:
            self._wake.set()
        return Submission(job_id, number, node_errors=result.node_errors)

    async def cancel(self, job_id: str) -> list[str]:
        """Cancel one job (queued or running), or every running job when `job_id` is empty."""
        if not job_id:
            ids = list(self.running)
        else:
            ids = [job_id]
        cancelled = []
        for target in ids:
            if self._cancel_running(target):
                cancelled.append(target)
                continue
            job = await self.store.get_job(target)
            if job is not None and job.status == JobStatus.QUEUED:
                await self.bus.record(self.store.set_status, target, JobStatus.CANCELLED,
                                      event=EventType.CANCELLED, data={"while": JobStatus.QUEUED})
                cancelled.append(target)
                await self._finished(target)
            elif job is not None and job.status == JobStatus.RUNNING and await self.store.request_cancel(target):
                cancelled.append(target)  # another orchestrator runs it: it cancels it as a user cancel
        return cancelled

    def _cancel_running(self, job_id: str) -> bool:
        """Cancel the job's task as a user cancel, if this orchestrator runs it (once: a second cancel landing
        while the first is recorded would cut that write short)."""
        task = self.running.get(job_id)
        if task is None:
            return False
        if job_id not in self._user_cancelled and job_id not in self._lost:
            self._user_cancelled.add(job_id)
            task.cancel()
        return True

    def _cancel_requested(self, job_id: str) -> None:
        """A cancel of a job that this orchestrator may run came through the store (another one took it)."""
        if self._cancel_running(job_id):
            log.info("job cancelled at another orchestrator's request", extra=log_fields(job=job_id))

    async def recover(self) -> None:
        """After a restart: jobs that were running and that no live orchestrator holds are queued again; the
        cache skips finished work."""
        await self.bus.follow_store()
        await self.store.listen_cancels(self._cancel_requested)
        self.webhooks.secret = await webhook_secret(self.settings, self.store)
        for event in await self.bus.record(self.store.requeue_orphans):
            done = "cancelled (as was asked)" if event.type == EventType.CANCELLED else "re-queued"
            log.info(f"job {done} after restart", extra=log_fields(job=event.job_id))
        self._redelivery = asyncio.create_task(self.redeliver_webhooks())
        self._redelivery.add_done_callback(_log_failure("webhook redelivery"))
        self._recovered = True

    async def redeliver_webhooks(self) -> bool:
        """Webhooks are at-least-once: deliveries cut short by a crash are sent again, by one orchestrator of
        those sharing the store (held until they end; False: another is at it, this pass is skipped)."""
        async with self.store.exclusive(PeriodicTask.WEBHOOK_REDELIVERY) as ours:
            if not ours:
                return False
            sending = [await self._finished(job_id) for job_id in await self.store.jobs_awaiting_webhook()]
            await asyncio.gather(*(task for task in sending if task is not None), return_exceptions=True)
            return True

    async def collect_garbage_forever(self) -> None:
        while True:
            try:
                await self.retention_pass()
            except Exception:  # a failed pass is retried at the next interval
                log.exception("retention pass failed")
            await asyncio.sleep(self.settings.gc_interval_s)

    async def retention_pass(self) -> bool:
        """One retention pass, unless another orchestrator sharing the store is doing one (False: skipped)."""
        policy = RetentionPolicy(cache_max_age_s=self.settings.cache_max_age_s,
                                 cache_max_bytes=self.settings.cache_max_bytes,
                                 temp_max_age_s=self.settings.temp_max_age_s,
                                 output_max_age_s=self.settings.output_max_age_s)
        async with self.store.exclusive(PeriodicTask.RETENTION) as ours:
            if not ours:
                return False
            store = self.store.sync if isinstance(self.store, SqliteJobStore) else \
                BlockingCache(self.store, asyncio.get_running_loop())
            await asyncio.to_thread(collect, store, self.artifacts, self.settings.home, policy, files=self.files)
            return True

    async def run_forever(self) -> None:
        if not self._recovered:  # the orchestrator's start-up recovers before it listens
            await self.recover()
        self._gc = asyncio.create_task(self.collect_garbage_forever())
        if self.store.shared:
            self._leases = asyncio.create_task(supervise("lease keeper", self._keep_leases_forever))
        await supervise("dispatcher", self._dispatch_forever)

    async def _keep_leases_forever(self) -> None:
        """Shared store: renew this orchestrator's leases every TTL/3, stop the jobs whose lease was lost (their
        stage calls are cancelled; the store refuses their writes), cancel the jobs whose cancel was requested
        (a missed notification costs at most TTL/3) and re-queue any expired lease."""
        while True:
            for job_id in await self.store.renew_leases():
                task = self.running.get(job_id)
                if task is not None:
                    log.warning("lease lost; the job's stage calls are cancelled", extra=log_fields(job=job_id))
                    self._lost.add(job_id)
                    task.cancel()
            for job_id in await self.store.cancels_requested():
                self._cancel_requested(job_id)
            for event in await self.bus.record(self.store.requeue_expired):
                if event.type == EventType.CANCELLED:  # its cancel was asked for before its orchestrator stopped
                    log.info("job cancelled: its orchestrator's lease expired", extra=log_fields(job=event.job_id))
                    await self._finished(event.job_id)
                    continue
                log.info("job re-queued: its orchestrator's lease expired", extra=log_fields(job=event.job_id))
                self._wake.set()
            await asyncio.sleep(self.settings.lease_ttl_s / 3)

    async def hand_back(self) -> None:
        """SIGTERM: give every lease back (running jobs are re-queued for the other orchestrators), then stop
        driving them; their later writes are refused by the store."""
        for event in await self.bus.record(self.store.hand_back):
            log.info("job handed back", extra=log_fields(job=event.job_id))
        for job_id, task in list(self.running.items()):
            self._lost.add(job_id)
            task.cancel()

    async def _dispatch_forever(self) -> None:
        while True:
            await self._dispatch()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._wake.wait()

    async def _dispatch(self) -> None:
        """Start queued jobs, best first, while there is room."""
        while len(self.running) < self.settings.max_running_jobs:
            # one indexed query: cheaper than a thread hop
            try:
                job = await self.store.claim_next(set(self.running) | self._unrecordable)
            except UnreadableJob as exc:
                await self._fail_alone(exc.job_id, exc)
                await self.store.release(exc.job_id)
                continue
            if job is None:
                return
            if job.id in self._expiring:
                return  # another dispatch is failing it right now and carries on after it
            if time.time() - job.created > self.settings.queue_wait_timeout_s:
                self._expiring.add(job.id)
                try:
                    await self._expire(job)
                finally:
                    self._expiring.discard(job.id)
                    await self.store.release(job.id)
                continue
            self.running[job.id] = asyncio.create_task(self._drive(job))

    async def _expire(self, job: JobRecord) -> None:
        error = failure_record(TimeoutExceededError(
            f"the job waited longer than its {self.settings.queue_wait_timeout_s:g} s queue timeout",
            details="queue_wait"))
        await self.bus.record(self.store.set_status, job.id, JobStatus.FAILED, error=error, event=EventType.FAILED,
                              data=error)
        await self._finished(job.id)

    async def _finished(self, job_id: str, asked: JobRecord | None = None) -> asyncio.Task[None] | None:
        """Tell the job's webhook, if it asked for one (`asked`: the job as submitted, to skip the read
        of its final record when it asked for none); returns the delivery's task."""
        if asked is not None and not _webhook_url(asked):
            return None
        job = await self.store.get_job(job_id)
        url = _webhook_url(job) if job is not None else ""
        if job is None or not url:
            return None
        return self.webhooks.send(job.id, url, {"job_id": job.id, "status": job.status, "error": job.error,
                                         "outputs": job.outputs, "finished": job.finished,
                                         "images": output_images(job.outputs, self.settings.public_base_url)})

    async def _drive(self, job: JobRecord) -> None:
        runner: JobRunner | None = None
        began, cancelled = time.time(), False
        try:
            runner = JobRunner(job, self.settings, self.catalog, self.artifacts, self.bus, self.pool,
                               plan=self._plans.pop(job.id, None), files=self.files)
            self.runners[job.id] = runner
            await self._check_stages_declare(_class_types(job.prompt))
            with trace.span("job", {"job.id": job.id}, parent=trace.stored_parent(job.extra_data.get(STORED_KEY))):
                await runner.run()
        except LeaseLost:
            log.warning("lease lost; another orchestrator runs the job", extra=log_fields(job=job.id))
            self._lost.add(job.id)  # not this orchestrator's to finish: no status, no webhook
        except asyncio.CancelledError:
            if job.id not in self._lost:  # a lost job is another orchestrator's now: it writes nothing more
                if job.id not in self._user_cancelled:
                    raise  # shutting down: the job stays running in the store and is re-queued at restart
                self._user_cancelled.discard(job.id)
                # a cancel that lands after the last result was recorded leaves the job completed
                if runner is None or not runner.completed:
                    cancelled = True
                    await self.bus.record(self.store.set_status, job.id, JobStatus.CANCELLED,
                                          event=EventType.CANCELLED, data={"while": JobStatus.RUNNING})
        except Exception as exc:  # a job that cannot be prepared, or a bug while it runs, fails this job alone
            if runner is None or not runner.completed:
                await self._fail_alone(job.id, exc)
        finally:
            self.running.pop(job.id, None)
            self.runners.pop(job.id, None)
            self._wake.set()
        if job.id in self._lost:
            self._lost.discard(job.id)
            await self.store.release(job.id)
            return
        status = (JobStatus.COMPLETED if runner is not None and runner.completed
                  else JobStatus.CANCELLED if cancelled else JobStatus.FAILED)
        log_finished(job.id, status, job.created, began, time.time(),
                     runner.recorder.stage_seconds if runner else {}, runner.recorder.failure if runner else None)
        await self.store.release(job.id)
        await self._finished(job.id, job)

    async def _check_stages_declare(self, class_types: set[str]) -> None:
        """Raise StageUnavailableError when no stage that is up declares some of a job's node classes (a job
        queued before a restart whose stage is not back, or was started without the plugin that declares it)."""
        if not await self.node_catalog.knows(class_types):
            missing = ", ".join(sorted(class_types - self.catalog.nodes.keys()))
            raise StageUnavailableError(f"no stage that is up runs {missing}: start the stage that declares "
                                        "these nodes (with its plugins), then submit the job again")

    async def _fail_alone(self, job_id: str, exc: Exception) -> None:
        """Fail a job that raised while it was prepared or run, and only that job."""
        if isinstance(exc, InvalidJobOptions):  # stored by an older version, before options were checked
            log.error("job could not be prepared", extra=log_fields(job=job_id, error=str(exc)))
            error = failure_record(ComfymeshError(f"the job's stored options are invalid ({exc}); submit it again",
                                                  type="invalid_options", details="prepare"))
        elif isinstance(exc, UnreadableJob):  # damaged on disk: nothing of it can be run
            log.error("job could not be read", extra=log_fields(job=job_id, error=str(exc)))
            error = failure_record(ComfymeshError(str(exc), type="unreadable_job", details="prepare"))
        elif isinstance(exc, ComfymeshError):  # refused before it ran (no stage runs its nodes)
            log.error("job could not be started", extra=log_fields(job=job_id, error=str(exc)))
            error = failure_record(exc)
        else:
            log.exception("job crashed", extra=log_fields(job=job_id))
            error = failure_record(ComfymeshError(f"{type(exc).__name__}: {exc}"))
        try:
            await self.bus.record(self.store.set_status, job_id, JobStatus.FAILED, error=error,
                                  event=EventType.FAILED, data=error)
        except Exception:  # still queued in the store: leave it there rather than fail it again and again
            log.exception("the job's failure could not be recorded", extra=log_fields(job=job_id))
            self._unrecordable.add(job_id)


def _class_types(prompt: Any) -> set[str]:
    """The node classes a prompt names (whatever its shape: validation reports what is malformed)."""
    if not isinstance(prompt, dict):
        return set()
    return {node["class_type"] for node in prompt.values()
            if isinstance(node, dict) and isinstance(node.get("class_type"), str)}


def _log_failure(name: str) -> Callable[[asyncio.Task[Any]], None]:
    """A done-callback that logs the task's exception (a background pass that failed waits for the next one)."""
    def done(task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error(f"the {name} failed", exc_info=task.exception())
    return done


def _webhook_url(job: JobRecord) -> str:
    """The job's webhook, "" when it has none or its stored options are unreadable (it fails for them)."""
    try:
        return JobOptions.from_stored(job.extra_data).webhook_url
    except InvalidJobOptions:
        return ""


async def supervise(name: str, forever: Callable[[], Awaitable[None]], max_backoff_s: float = 5.0) -> None:
    """Run `forever` and start it again whenever it dies (logged, after a backoff that grows while it keeps
    dying at once): one bug must not stop the queue for good."""
    failures = 0
    while True:
        started = time.monotonic()
        try:
            await forever()
            log.error(f"the {name} returned; starting it again")
        except Exception:
            log.exception(f"the {name} died; starting it again")
        failures = 1 if time.monotonic() - started > 60 else failures + 1
        await asyncio.sleep(min(max_backoff_s, 0.05 * 2 ** failures))
