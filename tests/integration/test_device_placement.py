"""One diffusion replica per device, simulated on the CPU with two diffusion stage processes: a job goes to the
replica that already holds its checkpoint, a new checkpoint to the replica holding none, and the images equal
the one-replica mesh's."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from comfymesh.rpc import open_channel
from comfymesh.v1 import stage_pb2, stage_pb2_grpc
from tests.mesh import SHARED, Mesh

# two different checkpoints of one family (random weights of different seeds)
CHECKPOINTS = {"model_a.safetensors": 1, "model_b.safetensors": 2}


def _home(root: Path) -> Path:
    for name, seed in CHECKPOINTS.items():
        path = root / "models" / "checkpoints" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "comfymesh.diffusion.models.tiny_checkpoint", "--family", "sd15",
                        "--seed", str(seed), str(path)], check=True, capture_output=True)
    return root


@pytest.fixture(scope="module")
def two_devices(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    mesh = Mesh(_home(tmp_path_factory.mktemp("two-devices")), stages=("imaging", "diffusion"),
                diffusion_replicas=2)
    try:
        yield mesh.start()
    finally:
        mesh.stop()


def prompt(checkpoint: str, seed: int) -> dict[str, Any]:
    graph: dict[str, Any] = json.loads((SHARED / "workflows" / "txt2img_sd15.json").read_text())
    graph["4"]["inputs"]["ckpt_name"] = checkpoint
    graph["3"]["inputs"].update(seed=seed, steps=2)
    graph["5"]["inputs"].update(width=64, height=64)
    return graph


def resident(mesh: Mesh) -> list[set[str]]:
    """What each diffusion replica says its cache holds (Describe), in replica order."""
    async def ask() -> list[set[str]]:
        held = []
        for address in mesh.env["COMFYMESH_DIFFUSION_REPLICAS"].split(","):
            async with open_channel(address) as channel:
                info = await stage_pb2_grpc.StageStub(channel).Describe(stage_pb2.DescribeRequest(), timeout=10)
                assert info.free_memory_bytes > 0
                held.append(set(info.resident_models))
        return held

    return asyncio.run(ask())


def test_jobs_go_to_the_replica_holding_their_checkpoint(two_devices: Mesh, tmp_path: Path) -> None:
    mesh = two_devices
    assert resident(mesh) == [set(), set()]
    outputs = {("model_a.safetensors", 1): mesh.run_output(prompt("model_a.safetensors", 1))}
    holder_a = next(i for i, held in enumerate(resident(mesh)) if "model_a.safetensors" in held)
    # B is held by no replica: it goes to the one holding nothing, so neither replica loads both
    outputs["model_b.safetensors", 1] = mesh.run_output(prompt("model_b.safetensors", 1))
    # later jobs (new seeds: the samplers run again) go to their checkpoint's holder
    for seed in (2, 3):
        for checkpoint in CHECKPOINTS:
            outputs[checkpoint, seed] = mesh.run_output(prompt(checkpoint, seed))
    held = resident(mesh)
    assert held[holder_a] == {"model_a.safetensors"}
    assert held[1 - holder_a] == {"model_b.safetensors"}
    assert len(set(outputs.values())) == len(outputs)  # different models and seeds, different images

    # the same jobs on a mesh with one diffusion replica give the same bytes
    single = Mesh(_home(tmp_path / "one-device"), stages=("imaging", "diffusion")).start()
    try:
        for (checkpoint, seed), image in [(k, v) for k, v in outputs.items() if k[1] != 2]:
            assert single.run_output(prompt(checkpoint, seed)) == image, (checkpoint, seed)
        assert resident(single) == [set(CHECKPOINTS)]
    finally:
        single.stop()
