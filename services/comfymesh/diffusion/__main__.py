"""`python -m comfymesh.diffusion`: the torch stage (checkpoints, CLIP, samplers, VAE) and ModelRunner."""

from __future__ import annotations

import os
from pathlib import Path

import grpc

from comfymesh.catalog.schema import NodeSet
from comfymesh.config import get_settings
from comfymesh.stage.server import StageServicer, stage_main


def _nodes() -> NodeSet:
    from comfymesh.diffusion.nodes import nodes
    from comfymesh.diffusion.warmup import start_warmup

    start_warmup(get_settings().home)
    return nodes


def _device() -> str:
    from comfymesh.diffusion.model_runner import device_name
    from comfymesh.diffusion.models.cache import get_model_cache

    return device_name(get_model_cache().device)


def _model_runner(stage: StageServicer) -> tuple[list, list[str]]:
    from comfymesh.diffusion.model_runner import ModelRunnerServicer
    from comfymesh.v1 import model_runner_pb2_grpc

    servicer = ModelRunnerServicer(stage.settings.home, stage.nodes, stage.store, stage.catalog)

    def register(server: grpc.aio.Server) -> None:
        model_runner_pb2_grpc.add_ModelRunnerServicer_to_server(servicer, server)

    return [register], ["comfymesh.v1.ModelRunner"]


def _batching_slots() -> None:
    """With cross-job batching on, let as many calls run at once as may share a batch (Describe reports it,
    so the orchestrator sends that many); stage_main reads the settings after this."""
    from comfymesh.diffusion.sampling.batching import batch_config

    config = batch_config()
    slots = get_settings().stage_slots
    if config.enabled and config.max_jobs > slots:
        os.environ["COMFYMESH_STAGE_SLOTS"] = str(min(64, config.max_jobs))
        get_settings.cache_clear()  # read once at start-up: this is still start-up


def main() -> None:
    _batching_slots()
    stage_main("diffusion", _nodes, Path(__file__).parent, get_settings().diffusion_replicas.split(",")[0],
               device=_device, extra=_model_runner)


if __name__ == "__main__":
    main()
