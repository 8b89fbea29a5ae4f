"""The Orchestrator gRPC servicer: thin handlers over the scheduler, the job store and the event bus."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc

from comfymesh import trace
from comfymesh.contracts import wirejson
from comfymesh.contracts.comfy_errors import error_detail
from comfymesh.contracts.events import FINISHED_STATUSES, JobStatus
from comfymesh.contracts.failures import failure_from_dict
from comfymesh.contracts.job_options import STORED_KEY, InvalidJobOptions, JobOptions
from comfymesh.contracts.job_order import JobOrder
from comfymesh.jobs import JobRecord
from comfymesh.orchestrator.cluster import cluster_view
from comfymesh.orchestrator.devices import free_models, list_devices
from comfymesh.orchestrator.model_listing import list_models, model_digest
from comfymesh.orchestrator.readiness import stage_health
from comfymesh.orchestrator.scheduler import Scheduler
from comfymesh.rpc.channels import max_message_bytes
from comfymesh.v1 import orchestrator_pb2, orchestrator_pb2_grpc, stage_pb2

Context: TypeAlias = grpc.aio.ServicerContext
_ORDERS = {orchestrator_pb2.JOB_ORDER_QUEUE: JobOrder.QUEUE, orchestrator_pb2.JOB_ORDER_NEWEST: JobOrder.NEWEST,
           orchestrator_pb2.JOB_ORDER_OLDEST: JobOrder.OLDEST, orchestrator_pb2.JOB_ORDER_LONGEST: JobOrder.LONGEST,
           orchestrator_pb2.JOB_ORDER_SHORTEST: JobOrder.SHORTEST}


def _too_large(size: int, limit: int) -> dict[str, object] | None:
    """ComfyUI's error body for a prompt the control plane could not carry once accepted (None: it can).

    A stage call carries the prompt twice (its nodes' inputs, and the whole as PNG metadata), and a job's
    record adds its node states: past a third of the message bound, its stage call and every read of the
    job would fail."""
    if size <= limit // 3:
        return None
    return error_detail("prompt_too_large", "Prompt is too large",
                        f"the prompt takes {size} bytes; this server takes at most {limit // 3} (a third of "
                        "COMFYMESH_GRPC_MAX_MESSAGE_BYTES)")


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServicer):
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.store = scheduler.store

    async def ExecuteWorkflow(self, request: orchestrator_pb2.WorkflowRequest,
                              context: Context) -> orchestrator_pb2.WorkflowResponse:
        trace.mark("orchestrator.submit")
        if error := _too_large(len(request.prompt_json), max_message_bytes()):
            return orchestrator_pb2.WorkflowResponse(accepted=False, error_json=wirejson.dumps(error),
                                                     node_errors_json="{}")
        try:
            prompt = wirejson.loads(request.prompt_json) if request.prompt_json else None
            extra = wirejson.loads(request.extra_data_json) if request.extra_data_json else {}
        except json.JSONDecodeError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"prompt is not JSON: {exc}")
        options = await self._options(request, extra, context)
        submission = await self.scheduler.submit(
            prompt, extra if isinstance(extra, dict) else {}, options, client_id=request.client_id,
            targets=list(request.partial_execution_targets) or None)
        return orchestrator_pb2.WorkflowResponse(queue_full=submission.queue_full,
            job_id=submission.job_id, number=submission.number, accepted=submission.error is None,
            error_json=wirejson.dumps(submission.error) if submission.error else "",
            node_errors_json=wirejson.dumps(submission.node_errors),
            existing=submission.existing, idempotency_conflict=submission.idempotency_conflict)

    async def _options(self, request: orchestrator_pb2.WorkflowRequest, extra: object,
                       context: Context) -> JobOptions:
        """The job's options, checked: a bad one refuses the job (INVALID_ARGUMENT) before anything is stored."""
        try:
            if isinstance(extra, dict) and STORED_KEY in extra:
                raise InvalidJobOptions(f"extra_data.{STORED_KEY} is reserved: pass job options as request fields")
            options = JobOptions(job_id=request.job_id, priority=request.priority if request.has_priority else None,
                                 front=request.front, timeout_s=request.timeout_s, webhook_url=request.webhook_url,
                                 user=request.user, idempotency_key=request.idempotency_key,
                                 request_digest=request.request_digest)
            options.check_outbound(self.scheduler.outbound)
        except InvalidJobOptions as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid job options: {exc}")
        return options

    async def ExecuteStage(self, request: orchestrator_pb2.ExecuteStageRequest,
                           context: Context) -> AsyncIterator[stage_pb2.StageEvent]:
        pool = self.scheduler.pool
        replica = await pool.acquire(request.stage, avoid=set())
        try:
            async for event in replica.stub.RunStage(request.request):
                yield event
        finally:
            await pool.release(replica)

    async def StreamStatus(self, request: orchestrator_pb2.StreamStatusRequest,
                           context: Context) -> AsyncIterator[orchestrator_pb2.JobEvent]:
        after = request.after_event_id
        if after < 0:
            # live only: the gateway's websocket hub must not replay the whole log when it (re)starts
            after = await self.store.last_event_id()
        async for event in self.scheduler.bus.stream(request.job_id or None, after,
                                                     request.follow, request.include_previews):
            data = dict(event.data)
            if event.id == 0 and isinstance(data.get("data"), bytes):
                data["data"] = data["data"].hex()
            yield orchestrator_pb2.JobEvent(id=event.id, job_id=event.job_id, type=event.type,
                                            node_id=event.node_id, data_json=wirejson.dumps(data), ts=event.ts)

    def _job_message(self, job: JobRecord, nodes: list[dict[str, Any]] | None = None) -> orchestrator_pb2.Job:
        message = orchestrator_pb2.Job(
            job_id=job.id, status=job.status, created=job.created, started=job.started or 0,
            finished=job.finished or 0, number=job.number, prompt_json=wirejson.dumps(job.submitted),
            extra_data_json=wirejson.dumps(job.extra_data), outputs_json=wirejson.dumps(job.outputs),
            client_id=job.client_id, output_node_ids=job.outputs_to_run)
        if job.error:
            message.error.CopyFrom(failure_from_dict(job.error))
        if nodes is not None:
            for node in nodes:
                message.nodes.add(node_id=node["node_id"], class_type=node["class_type"], state=node["state"],
                                  ui_json=node["ui_json"])
        return message

    async def GetJob(self, request: orchestrator_pb2.GetJobRequest,
                     context: Context) -> orchestrator_pb2.Job:
        if request.status_only:
            trace.mark("orchestrator.job_status")
            status = await self.store.job_status(request.job_id)
            if status is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.job_id!r}")
            return orchestrator_pb2.Job(job_id=request.job_id, status=status)
        # counted by tests: a client following events never needs to read the job back for one
        trace.mark("orchestrator.get_job")
        job = await self.store.get_job(request.job_id)
        if job is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.job_id!r}")
        assert job is not None
        nodes = await self.store.node_states(job.id)
        return await asyncio.to_thread(self._job_message, job, nodes)

    async def ListJobs(self, request: orchestrator_pb2.ListJobsRequest,
                       context: Context) -> AsyncIterator[orchestrator_pb2.ListJobsResponse]:
        jobs, total = await self.store.list_jobs(
            list(request.statuses) or None, max(request.limit, 0), max(request.offset, 0),
            _ORDERS.get(request.order, JobOrder.QUEUE), request.workflow_id or None, request.count_only,
            (request.after_created, request.after_job_id) if request.after_job_id else None)
        if not jobs:
            yield orchestrator_pb2.ListJobsResponse(total=total)
        for job in jobs:
            yield orchestrator_pb2.ListJobsResponse(jobs=[self._job_message(job)], total=total)

    async def CancelJob(self, request: orchestrator_pb2.CancelJobRequest,
                        context: Context) -> orchestrator_pb2.CancelJobResponse:
        return orchestrator_pb2.CancelJobResponse(cancelled=await self.scheduler.cancel(request.job_id))

    async def DeleteJobs(self, request: orchestrator_pb2.DeleteJobsRequest,
                         context: Context) -> orchestrator_pb2.DeleteJobsResponse:
        ids = list(request.job_ids)
        statuses = [*(FINISHED_STATUSES if request.all_finished else ()),
                    *((JobStatus.QUEUED,) if request.all_queued else ())]
        if statuses:
            jobs, _ = await self.store.list_jobs(statuses)
            ids += [job.id for job in jobs]
        for job_id in ids:
            await self.scheduler.cancel(job_id)
        deleted = await self.store.delete_jobs(ids) if ids else 0
        return orchestrator_pb2.DeleteJobsResponse(deleted=deleted)

    async def ListCheckpoints(self, request: orchestrator_pb2.ListCheckpointsRequest,
                              context: Context) -> orchestrator_pb2.ListCheckpointsResponse:
        folder = request.folder or "checkpoints"
        catalog = self.scheduler.catalog
        files = []
        for model in await asyncio.to_thread(list_models, catalog, folder):
            try:
                digest = await model_digest(self.store, catalog, model) if request.digests else ""
            except FileNotFoundError:
                continue  # removed since it was listed
            files.append(orchestrator_pb2.CheckpointFile(name=model.name, size=model.size, digest=digest,
                                                         folder=folder, modified=model.modified,
                                                         created=model.created))
        return orchestrator_pb2.ListCheckpointsResponse(files=files)

    async def GetNodeCatalog(self, request: orchestrator_pb2.GetNodeCatalogRequest,
                             context: Context) -> orchestrator_pb2.GetNodeCatalogResponse:
        await self.scheduler.node_catalog.ready(timeout=5.0)  # a stage still starting, not one that is down
        info = await asyncio.to_thread(self.scheduler.catalog.object_info)
        return orchestrator_pb2.GetNodeCatalogResponse(object_info_json=wirejson.dumps(info))

    async def ListDevices(self, request: orchestrator_pb2.ListDevicesRequest,
                          context: Context) -> orchestrator_pb2.ListDevicesResponse:
        return orchestrator_pb2.ListDevicesResponse(devices=await list_devices(self.scheduler.pool))

    async def FreeMemory(self, request: orchestrator_pb2.FreeMemoryRequest,
                         context: Context) -> orchestrator_pb2.FreeMemoryResponse:
        unloaded = await free_models(self.scheduler.pool) if request.unload_models or request.free_memory else []
        return orchestrator_pb2.FreeMemoryResponse(unloaded=unloaded)

    async def GetReadiness(self, request: orchestrator_pb2.GetReadinessRequest,
                           context: Context) -> orchestrator_pb2.GetReadinessResponse:
        return orchestrator_pb2.GetReadinessResponse(stages=[
            orchestrator_pb2.StageReadiness(stage=s.stage, replicas=s.replicas, healthy=s.healthy)
            for s in await stage_health(self.scheduler.pool)])

    async def GetCluster(self, request: orchestrator_pb2.GetClusterRequest,
                         context: Context) -> orchestrator_pb2.GetClusterResponse:
        return await cluster_view(self.scheduler)
