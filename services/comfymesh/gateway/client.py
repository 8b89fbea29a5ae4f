"""The gateway's one seam to the engine: an orchestrator client (gRPC implementation)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from comfymesh import wirejson
from comfymesh.jobs import EventRecord
from comfymesh.rpc import open_channel
from comfymesh.rpc.channels import max_message_bytes
from comfymesh.v1 import orchestrator_pb2, orchestrator_pb2_grpc

DEADLINE = 30.0


@dataclass
class SubmitResult:
    job_id: str
    number: float
    accepted: bool
    error: dict[str, Any] | None
    node_errors: dict[str, Any]
    existing: bool


# the gateway sees the same event records the job store keeps
JobEvent = EventRecord


class QueueFull(Exception):
    """The orchestrator refused a submit: its queue is at the configured limit (HTTP 429)."""


class PromptTooLarge(Exception):
    """A submit larger than the control plane's message limit (HTTP 413); the orchestrator never saw it."""


class OrchestratorUnavailable(Exception):
    """The orchestrator cannot be reached; the gateway answers 503 and the client retries."""


def _event(message: orchestrator_pb2.JobEvent) -> JobEvent:
    return JobEvent(message.id, message.job_id, message.type, message.node_id,
                    wirejson.loads(message.data_json) if message.data_json else {}, message.ts)


def _unavailable(exc: grpc.aio.AioRpcError) -> bool:
    return exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class OrchestratorClient:
    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = open_channel(address)
        self.stub = orchestrator_pb2_grpc.OrchestratorStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=DEADLINE, wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            if _unavailable(exc):
                raise OrchestratorUnavailable(f"orchestrator at {self.address} is unavailable: {exc.details()}") from exc
            raise

    async def ready(self) -> bool:
        try:
            reply = await self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def submit(self, prompt: Any, extra_data: dict[str, Any], *, client_id: str = "", job_id: str = "",
                     priority: float | None = None, front: bool = False, targets: list[str] | None = None,
                     timeout_s: float = 0.0, webhook_url: str = "", user: str = "") -> SubmitResult:
        request = orchestrator_pb2.WorkflowRequest(
            prompt_json=wirejson.dumps(prompt), extra_data_json=wirejson.dumps(extra_data), client_id=client_id,
            job_id=job_id, priority=priority or 0.0, has_priority=priority is not None, front=front,
            partial_execution_targets=targets or [], timeout_s=timeout_s, webhook_url=webhook_url, user=user)
        try:
            reply = await self._call(self.stub.ExecuteWorkflow, request)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise PromptTooLarge(f"the prompt and its options take {request.ByteSize()} bytes on the wire; "
                                     f"the limit is {max_message_bytes()} (COMFYMESH_GRPC_MAX_MESSAGE_BYTES)") from exc
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:  # refused before anything was stored: HTTP 400
                error: dict[str, Any] = {"type": "invalid_prompt", "message": "Invalid job options",
                                         "details": exc.details() or "", "extra_info": {}}
                return SubmitResult("", 0.0, False, error, {}, False)
            raise
        if reply.queue_full:
            raise QueueFull("the queue is full; retry later")
        return SubmitResult(reply.job_id, reply.number, reply.accepted,
                            json.loads(reply.error_json) if reply.error_json else None,
                            json.loads(reply.node_errors_json) if reply.node_errors_json else {}, reply.existing)

    async def get_job(self, job_id: str, status_only: bool = False) -> orchestrator_pb2.Job | None:
        """The job (None if there is none); `status_only` fills only its id and status, cheaply."""
        try:
            return await self._call(self.stub.GetJob, orchestrator_pb2.GetJobRequest(job_id=job_id,
                                                                                     status_only=status_only))
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    async def list_jobs(self, statuses: list[str] | None = None, limit: int = 0, offset: int = 0,
                        newest_first: bool = False) -> orchestrator_pb2.ListJobsResponse:
        request = orchestrator_pb2.ListJobsRequest(statuses=statuses or [], limit=limit, offset=offset,
                                                   newest_first=newest_first)
        listing = orchestrator_pb2.ListJobsResponse()
        try:
            async for chunk in self.stub.ListJobs(request, timeout=DEADLINE, wait_for_ready=True):
                listing.jobs.extend(chunk.jobs)
                listing.total = chunk.total
        except grpc.aio.AioRpcError as exc:
            if _unavailable(exc):
                raise OrchestratorUnavailable(f"orchestrator at {self.address} is unavailable: {exc.details()}") from exc
            raise
        return listing

    async def cancel(self, job_id: str = "") -> list[str]:
        reply = await self._call(self.stub.CancelJob, orchestrator_pb2.CancelJobRequest(job_id=job_id))
        return list(reply.cancelled)

    async def delete_jobs(self, job_ids: list[str], all_finished: bool = False, all_queued: bool = False) -> int:
        reply = await self._call(self.stub.DeleteJobs, orchestrator_pb2.DeleteJobsRequest(
            job_ids=job_ids, all_finished=all_finished, all_queued=all_queued))
        return int(reply.deleted)

    async def checkpoints(self, folder: str = "checkpoints") -> list[orchestrator_pb2.CheckpointFile]:
        reply = await self._call(self.stub.ListCheckpoints, orchestrator_pb2.ListCheckpointsRequest(folder=folder))
        return list(reply.files)

    async def object_info(self) -> dict[str, Any]:
        reply = await self._call(self.stub.GetNodeCatalog, orchestrator_pb2.GetNodeCatalogRequest())
        return dict(json.loads(reply.object_info_json))

    async def devices(self) -> list[orchestrator_pb2.Device]:
        reply = await self._call(self.stub.ListDevices, orchestrator_pb2.ListDevicesRequest())
        return list(reply.devices)

    async def free(self, unload_models: bool = True, free_memory: bool = False) -> list[str]:
        reply = await self._call(self.stub.FreeMemory, orchestrator_pb2.FreeMemoryRequest(
            unload_models=unload_models, free_memory=free_memory))
        return list(reply.unloaded)

    async def events(self, job_id: str = "", after: int = 0, follow: bool = True,
                     previews: bool = False) -> AsyncIterator[JobEvent]:
        request = orchestrator_pb2.StreamStatusRequest(job_id=job_id, after_event_id=after, follow=follow,
                                                       include_previews=previews)
        try:
            async for message in self.stub.StreamStatus(request, wait_for_ready=True):
                yield _event(message)
        except grpc.aio.AioRpcError as exc:
            if _unavailable(exc):
                raise OrchestratorUnavailable(str(exc.details())) from exc
            raise
