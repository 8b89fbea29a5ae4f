"""The ModelRunner gRPC service: list, load and unload resident models; run one node directly."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import torch

from comfymesh.artifacts import ArtifactStore, decode_value, encode_value
from comfymesh.catalog import Catalog
from comfymesh.contracts.errors import ComfymeshError
from comfymesh.contracts.failures import failure_from_exception
from comfymesh.diffusion.memory.host import host_memory
from comfymesh.diffusion.models.cache import ModelCache, get_model_cache
from comfymesh.stage.node import NodeContext, NodeImpl
from comfymesh.v1 import model_runner_pb2, model_runner_pb2_grpc


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} {torch.cuda.get_device_name(device)}"
    return str(device)


def device_memory(device: torch.device) -> tuple[int, int]:
    """(total, free) bytes of the device: GPU memory, or system RAM for the CPU."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return int(total), int(free)
    return host_memory()


class ModelRunnerServicer(model_runner_pb2_grpc.ModelRunnerServicer):
    def __init__(self, home: Path, nodes: dict[str, NodeImpl], store: ArtifactStore, catalog: Catalog,
                 cache: ModelCache | None = None) -> None:
        self.home = home
        self.nodes = nodes
        self.store = store
        self.catalog = catalog
        self.cache = cache or get_model_cache()

    def _info(self, entry: dict[str, Any], loaded: bool) -> model_runner_pb2.ModelInfo:
        return model_runner_pb2.ModelInfo(name=entry["name"], digest=entry.get("digest", ""),
                                          bytes=int(entry.get("bytes", 0)), device=str(entry.get("device", "")),
                                          family=str(entry.get("family", "")), loaded=loaded)

    async def ListModels(self, request: model_runner_pb2.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> model_runner_pb2.ListModelsResponse:
        loaded = await asyncio.to_thread(self.cache.list)
        names = {entry["name"] for entry in loaded}
        # sizes from the listing: a bucket's checkpoints are not fetched to be listed
        listed = await asyncio.to_thread(self.catalog.folders.sizes, "checkpoints")
        on_disk = [{"name": name, "bytes": size} for name, size in listed if name not in names]
        total, free = await asyncio.to_thread(device_memory, self.cache.device)
        return model_runner_pb2.ListModelsResponse(
            models=[self._info(e, True) for e in loaded] + [self._info(e, False) for e in on_disk],
            memory_budget_bytes=self.cache.budget, memory_used_bytes=self.cache.used_bytes(),
            device=device_name(self.cache.device), device_total_bytes=total, device_free_bytes=free)

    async def LoadModel(self, request: model_runner_pb2.LoadModelRequest,
                        context: grpc.aio.ServicerContext) -> model_runner_pb2.ModelInfo:
        path = self.catalog.folders.resolve("checkpoints", request.name)
        if path is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no checkpoint {request.name!r} in models/checkpoints")
        assert path is not None
        try:
            loaded = await asyncio.to_thread(self.cache.get, path)
        except ComfymeshError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, exc.message)
        return model_runner_pb2.ModelInfo(name=loaded.name, digest=loaded.digest, bytes=loaded.nbytes,
                                          device=str(loaded.device), family=loaded.family, loaded=True)

    async def UnloadModel(self, request: model_runner_pb2.UnloadModelRequest,
                          context: grpc.aio.ServicerContext) -> model_runner_pb2.UnloadModelResponse:
        before = {entry["name"] for entry in self.cache.list()}
        await asyncio.to_thread(self.cache.unload, request.name or None)
        after = {entry["name"] for entry in self.cache.list()}
        return model_runner_pb2.UnloadModelResponse(unloaded=sorted(before - after))

    async def Infer(self, request: model_runner_pb2.InferRequest,
                    context: grpc.aio.ServicerContext) -> model_runner_pb2.InferResponse:
        impl = self.nodes.get(request.class_type)
        definition = self.catalog.get(request.class_type)
        if impl is None or definition is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"this stage does not run {request.class_type}")
        assert impl is not None and definition is not None

        def run() -> model_runner_pb2.InferResponse:
            inputs: dict[str, Any] = json.loads(request.literal_inputs_json or "{}")
            inputs.update({name: decode_value(value, self.store) for name, value in request.inputs.items()})
            ctx = NodeContext(job_id="infer", node_id="infer", class_type=request.class_type, home=self.home,
                              model_folders=self.catalog.folders)
            try:
                outputs = impl(ctx, **inputs)
            except Exception as exc:
                return model_runner_pb2.InferResponse(failure=failure_from_exception(exc, "infer", request.class_type))
            return model_runner_pb2.InferResponse(outputs=[
                encode_value(definition.outputs[slot], value, self.store) for slot, value in enumerate(outputs)])

        return await asyncio.to_thread(run)
