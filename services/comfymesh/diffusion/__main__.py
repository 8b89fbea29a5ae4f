"""`python -m comfymesh.diffusion`: the torch stage (checkpoints, CLIP, samplers, VAE) and ModelRunner."""

from __future__ import annotations

from pathlib import Path

import grpc

from comfymesh.catalog.schema import NodeSet
from comfymesh.config import Settings, get_settings
from comfymesh.stage.server import StageServicer, stage_main


def _nodes() -> NodeSet:
    from comfymesh.diffusion.nodes import nodes
    from comfymesh.diffusion.warmup import start_warmup

    start_warmup(get_settings())
    return nodes


def _device() -> str:
    from comfymesh.diffusion.model_runner import device_name
    from comfymesh.diffusion.models.cache import get_model_cache

    return device_name(get_model_cache().device)


def _residency() -> tuple[list[str], int]:
    """The model files this replica's cache holds and its device's free bytes (Describe tells the orchestrator,
    which sends a job to the replica already holding its model)."""
    from comfymesh.diffusion.model_runner import device_memory
    from comfymesh.diffusion.models.cache import get_model_cache

    cache = get_model_cache()
    return sorted({entry["name"] for entry in cache.list()}), device_memory(cache.device)[1]


def _model_runner(stage: StageServicer) -> tuple[list, list[str]]:
    from comfymesh.diffusion.model_runner import ModelRunnerServicer
    from comfymesh.v1 import model_runner_pb2_grpc

    servicer = ModelRunnerServicer(stage.settings.home, stage.nodes, stage.store, stage.catalog)

    def register(server: grpc.aio.Server) -> None:
        model_runner_pb2_grpc.add_ModelRunnerServicer_to_server(servicer, server)

    return [register], ["comfymesh.v1.ModelRunner"]


def batching_slots(settings: Settings) -> int:
    """Calls the stage runs at once: with cross-job batching on, as many as may share a batch (Describe
    reports it, so the orchestrator sends that many), else COMFYMESH_STAGE_SLOTS."""
    if settings.batching_enabled:
        return max(settings.stage_slots, settings.batch_max)
    return settings.stage_slots


def main() -> None:
    stage_main("diffusion", _nodes, Path(__file__).parent, get_settings().diffusion_replicas.split(",")[0],
               device=_device, extra=_model_runner, slots=batching_slots, resident=_residency)


if __name__ == "__main__":
    main()
