"""The gRPC implementation of the gateway's `Engine`: the one gateway module that speaks protobuf.

Every answer is turned into the domain objects of `comfymesh.gateway.engine` here, so nothing past this
module sees a pb2 message.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from comfymesh.config.discovery import is_dns_target, parse_dns_target
from comfymesh.contracts import wirejson
from comfymesh.contracts.comfy_errors import error_detail
from comfymesh.contracts.events import JobEvent, JobStatus
from comfymesh.contracts.job_order import JobOrder
from comfymesh.gateway.engine import (
    Device,
    Failure,
    Job,
    JobPage,
    JobProgress,
    JobQuery,
    ModelFile,
    NewJob,
    NodeInfo,
    OrchestratorState,
    OrchestratorUnavailable,
    PromptTooLarge,
    QueueFull,
    Readiness,
    ReplicaState,
    StageReadiness,
    Submission,
)
from comfymesh.rpc import open_channel
from comfymesh.rpc.channels import max_message_bytes
from comfymesh.rpc.discovery import Resolver, dns_addresses, expand
from comfymesh.rpc.status_codes import is_unavailable
from comfymesh.v1 import orchestrator_pb2, orchestrator_pb2_grpc

DEADLINE = 30.0
CLUSTER_DEADLINE = 5.0  # an orchestrator of a `dns:///` name that does not answer in time shows as down
_ORDERS = {JobOrder.QUEUE: orchestrator_pb2.JOB_ORDER_QUEUE, JobOrder.NEWEST: orchestrator_pb2.JOB_ORDER_NEWEST,
           JobOrder.OLDEST: orchestrator_pb2.JOB_ORDER_OLDEST, JobOrder.LONGEST: orchestrator_pb2.JOB_ORDER_LONGEST,
           JobOrder.SHORTEST: orchestrator_pb2.JOB_ORDER_SHORTEST}


def _json(text: str, empty: Any) -> Any:
    return wirejson.loads(text) if text else empty


def _job(message: orchestrator_pb2.Job) -> Job:
    error = None
    if message.HasField("error"):
        error = Failure(type=message.error.type, node_id=message.error.node_id, message=message.error.message,
                        node_type=message.error.node_type, details=message.error.details,
                        non_retryable=message.error.non_retryable)
    return Job(job_id=message.job_id, status=message.status, number=message.number, created=message.created,
               started=message.started or None, finished=message.finished or None, client_id=message.client_id,
               prompt=_json(message.prompt_json, {}), extra_data=_json(message.extra_data_json, {}),
               outputs=_json(message.outputs_json, {}), output_node_ids=list(message.output_node_ids),
               nodes=[NodeInfo(n.node_id, n.class_type, n.state, _json(n.ui_json, None)) for n in message.nodes],
               error=error)


def _event(message: orchestrator_pb2.JobEvent) -> JobEvent:
    return JobEvent(message.id, message.job_id, message.type, message.node_id, _json(message.data_json, {}),
                    message.ts)


def _cluster(address: str, reply: orchestrator_pb2.GetClusterResponse) -> OrchestratorState:
    return OrchestratorState(
        address, True, reply.orchestrator, reply.max_running_jobs, reply.waiting_calls,
        tuple(ReplicaState(r.stage, r.address, r.healthy, r.slots, r.in_flight, r.device, tuple(r.models),
                           r.device_total_bytes, r.device_free_bytes, r.memory_budget_bytes, r.memory_used_bytes,
                           r.failures) for r in reply.replicas),
        tuple(JobProgress(j.job_id, j.node_id, j.class_type, j.value, j.max, j.nodes_done, j.nodes_total)
              for j in reply.running))


class OrchestratorClient:
    """`Engine` over the orchestrator's gRPC API."""

    def __init__(self, address: str, resolve: Resolver = dns_addresses) -> None:
        """`address`: `host:port`, or `dns:///name:port` (every address of the name; `resolve` finds them for
        the cluster view, which asks each orchestrator)."""
        self.address = address
        self.resolve = resolve
        self.channel = open_channel(address)
        self.stub = orchestrator_pb2_grpc.OrchestratorStub(self.channel)
        self._each: dict[str, grpc.aio.Channel] = {}  # the cluster view's channel to each orchestrator

    async def close(self) -> None:
        await self.channel.close()
        for channel in self._each.values():
            await channel.close()

    def _unavailable(self, exc: grpc.aio.AioRpcError) -> OrchestratorUnavailable:
        return OrchestratorUnavailable(f"orchestrator at {self.address} is unavailable: {exc.details()}")

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=DEADLINE, wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            if is_unavailable(exc):
                raise self._unavailable(exc) from exc
            raise

    async def readiness(self) -> Readiness:
        try:  # no wait_for_ready: a probe must answer at once, and an orchestrator that is down is not ready
            reply = await self.stub.GetReadiness(orchestrator_pb2.GetReadinessRequest(), timeout=3)
        except grpc.aio.AioRpcError:
            return Readiness(orchestrator=False)
        return Readiness(True, tuple(StageReadiness(s.stage, s.replicas, s.healthy) for s in reply.stages))

    async def submit(self, job: NewJob) -> Submission:
        request = orchestrator_pb2.WorkflowRequest(
            prompt_json=wirejson.dumps(job.prompt), extra_data_json=wirejson.dumps(job.extra_data),
            client_id=job.client_id, job_id=job.job_id, priority=job.priority or 0.0,
            has_priority=job.priority is not None, front=job.front, partial_execution_targets=job.targets or [],
            timeout_s=job.timeout_s, webhook_url=job.webhook_url, user=job.user,
            idempotency_key=job.idempotency_key, request_digest=job.request_digest)
        try:
            reply = await self._call(self.stub.ExecuteWorkflow, request)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise PromptTooLarge(f"the prompt and its options take {request.ByteSize()} bytes on the wire; "
                                     f"the limit is {max_message_bytes()} (COMFYMESH_GRPC_MAX_MESSAGE_BYTES)") from exc
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:  # refused before anything was stored: HTTP 400
                return Submission("", 0.0, False, error_detail("invalid_prompt", "Invalid job options",
                                                               exc.details() or ""), {})
            raise
        if reply.queue_full:
            raise QueueFull("the queue is full; retry later")
        return Submission(reply.job_id, reply.number, reply.accepted, _json(reply.error_json, None),
                          _json(reply.node_errors_json, {}), reply.existing, reply.idempotency_conflict)

    async def get_job(self, job_id: str, status_only: bool = False) -> Job | None:
        try:
            reply = await self._call(self.stub.GetJob, orchestrator_pb2.GetJobRequest(job_id=job_id,
                                                                                      status_only=status_only))
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return _job(reply)

    async def _list(self, request: orchestrator_pb2.ListJobsRequest) -> tuple[list[Job], int]:
        jobs, total = [], 0
        try:
            async for chunk in self.stub.ListJobs(request, timeout=DEADLINE, wait_for_ready=True):
                jobs += [_job(job) for job in chunk.jobs]
                total = chunk.total
        except grpc.aio.AioRpcError as exc:
            if is_unavailable(exc):
                raise self._unavailable(exc) from exc
            raise
        return jobs, total

    async def list_jobs(self, query: JobQuery) -> JobPage:
        jobs, total = await self._list(orchestrator_pb2.ListJobsRequest(
            statuses=list(query.statuses), limit=query.limit or 0, offset=query.offset, order=_ORDERS[query.order],
            workflow_id=query.workflow_id or "", after_created=query.after[0] if query.after else 0.0,
            after_job_id=query.after[1] if query.after else ""))
        return JobPage(jobs, total, query.offset)

    async def count_jobs(self, statuses: Sequence[JobStatus]) -> int:
        _, total = await self._list(orchestrator_pb2.ListJobsRequest(statuses=list(statuses), count_only=True))
        return total

    async def cancel(self, job_id: str = "") -> list[str]:
        reply = await self._call(self.stub.CancelJob, orchestrator_pb2.CancelJobRequest(job_id=job_id))
        return list(reply.cancelled)

    async def delete_jobs(self, job_ids: Sequence[str], all_finished: bool = False, all_queued: bool = False) -> int:
        reply = await self._call(self.stub.DeleteJobs, orchestrator_pb2.DeleteJobsRequest(
            job_ids=list(job_ids), all_finished=all_finished, all_queued=all_queued))
        return int(reply.deleted)

    async def model_files(self, folder: str, digests: bool = False) -> list[ModelFile]:
        reply = await self._call(self.stub.ListCheckpoints, orchestrator_pb2.ListCheckpointsRequest(
            folder=folder, digests=digests))
        return [ModelFile(f.name, f.size, f.modified, f.created, f.digest) for f in reply.files]

    async def object_info(self) -> dict[str, Any]:
        reply = await self._call(self.stub.GetNodeCatalog, orchestrator_pb2.GetNodeCatalogRequest())
        return dict(wirejson.loads(reply.object_info_json))

    async def devices(self) -> list[Device]:
        reply = await self._call(self.stub.ListDevices, orchestrator_pb2.ListDevicesRequest())
        return [Device(d.name, d.type, d.index, d.vram_total, d.vram_free, d.torch_vram_total, d.torch_vram_free)
                for d in reply.devices]

    async def free(self, unload_models: bool = True, free_memory: bool = False) -> list[str]:
        reply = await self._call(self.stub.FreeMemory, orchestrator_pb2.FreeMemoryRequest(
            unload_models=unload_models, free_memory=free_memory))
        return list(reply.unloaded)

    async def cluster(self) -> tuple[OrchestratorState, ...]:
        if not is_dns_target(self.address):
            reply = await self._call(self.stub.GetCluster, orchestrator_pb2.GetClusterRequest())
            return (_cluster(self.address, reply),)
        # each orchestrator the name stands for, asked directly (round_robin would answer for one of them)
        addresses = await asyncio.to_thread(expand, parse_dns_target(self.address), self.resolve)
        if not addresses:
            raise OrchestratorUnavailable(f"no orchestrator resolved from {self.address}")
        return tuple(await asyncio.gather(*(self._cluster_of(address) for address in addresses)))

    async def _cluster_of(self, address: str) -> OrchestratorState:
        if address not in self._each:
            self._each[address] = open_channel(address)
        stub = orchestrator_pb2_grpc.OrchestratorStub(self._each[address])
        try:
            reply = await stub.GetCluster(orchestrator_pb2.GetClusterRequest(), timeout=CLUSTER_DEADLINE)
        except grpc.aio.AioRpcError:
            return OrchestratorState(address, healthy=False)
        return _cluster(address, reply)

    async def events(self, job_id: str = "", after: int = 0, follow: bool = True,
                     previews: bool = False) -> AsyncIterator[JobEvent]:
        request = orchestrator_pb2.StreamStatusRequest(job_id=job_id, after_event_id=after, follow=follow,
                                                       include_previews=previews)
        try:
            async for message in self.stub.StreamStatus(request, wait_for_ready=True):
                yield _event(message)
        except grpc.aio.AioRpcError as exc:
            if is_unavailable(exc):
                raise self._unavailable(exc) from exc
            raise
