"""Ask the model-running stage replicas about their devices, or to unload their models.

Replicas that do not implement ModelRunner (the imaging stage) or do not answer are skipped:
ComfyUI's /system_stats and /free must keep working when no device is known.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from comfymesh.orchestrator.replicas import Replica, ReplicaPool
from comfymesh.rpc import open_channel
from comfymesh.v1 import model_runner_pb2, model_runner_pb2_grpc, orchestrator_pb2

log = logging.getLogger("comfymesh.orchestrator")
_TIMEOUT = 3.0
_stubs: dict[str, model_runner_pb2_grpc.ModelRunnerStub] = {}


def _runner(replica: Replica) -> model_runner_pb2_grpc.ModelRunnerStub:
    if replica.address not in _stubs:
        _stubs[replica.address] = model_runner_pb2_grpc.ModelRunnerStub(open_channel(replica.address))
    return _stubs[replica.address]


def _device_type(device: str) -> str:
    return device.split(":", 1)[0] if device else "cpu"


async def runner_models(replica: Replica) -> model_runner_pb2.ListModelsResponse | None:
    """The replica's ModelRunner answer (models, memory, device); None when it runs no models or is down."""
    try:
        return await _runner(replica).ListModels(model_runner_pb2.ListModelsRequest(), timeout=_TIMEOUT)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
            log.info("replica %s did not report its device: %s", replica.address, exc.code().name)
        return None


async def list_devices(pool: ReplicaPool) -> list[orchestrator_pb2.Device]:
    replicas = pool.all()
    replies = await asyncio.gather(*(runner_models(r) for r in replicas))
    devices = []
    for replica, reply in zip(replicas, replies, strict=True):
        if reply is None:
            continue
        name = reply.device or replica.device or "cpu"
        index = int(name.split(":", 1)[1]) if ":" in name and name.split(":", 1)[1].isdigit() else 0
        devices.append(orchestrator_pb2.Device(
            name=name, type=_device_type(name), index=index, vram_total=reply.device_total_bytes,
            vram_free=reply.device_free_bytes, torch_vram_total=reply.memory_budget_bytes,
            torch_vram_free=max(reply.memory_budget_bytes - reply.memory_used_bytes, 0),
            stage=replica.stage, address=replica.address))
    return devices


async def _unload(replica: Replica) -> list[str]:
    try:
        reply = await _runner(replica).UnloadModel(model_runner_pb2.UnloadModelRequest(), timeout=30)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
            log.info("replica %s did not unload its models: %s", replica.address, exc.code().name)
        return []
    return list(reply.unloaded)


async def free_models(pool: ReplicaPool) -> list[str]:
    results = await asyncio.gather(*(_unload(r) for r in pool.all()))
    return [name for names in results for name in names]
