"""Placement by resident model: stage replicas advertise what their cache holds (Describe), the orchestrator's
pool sends a call to the replica holding the call's model and spreads calls by load when none does. Real stage
servers on loopback; what each holds is set by the test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest

from comfymesh.catalog.schema import Int, NodeSet, Output
from comfymesh.config import Settings
from comfymesh.orchestrator.replicas import ReplicaPool
from comfymesh.rpc import start_server
from comfymesh.stage.server import StageServicer
from comfymesh.v1 import stage_pb2, stage_pb2_grpc

FREE = {"a": 7 * 2**30, "b": 3 * 2**30}


def _nodes() -> NodeSet:
    nodes = NodeSet("diffusion")

    @nodes.define("TestEcho", category="testing", inputs=[Int("seed", 0)], outputs=[Output("INT")])
    def echo(ctx: Any, seed: int) -> tuple[int]:
        return (seed,)

    return nodes


def _holding(models: list[str], free: int) -> tuple[list[str], int]:
    return list(models), free


def _register(servicer: StageServicer, server: grpc.aio.Server) -> None:
    stage_pb2_grpc.add_StageServicer_to_server(servicer, server)


@pytest.fixture
async def two_replicas(configure: Callable[..., Settings], tmp_path: Path) -> AsyncIterator[
        tuple[list[str], dict[str, list[str]]]]:
    """Two stage servers, `a` and `b`: their addresses, and the model files each says it holds (editable)."""
    settings = configure(home=str(tmp_path / "home"))
    held: dict[str, list[str]] = {"a": [], "b": []}
    servers, addresses = [], []
    for name in ("a", "b"):
        servicer = StageServicer("diffusion", _nodes(), settings, "test", device=f"cpu ({name})", slots=2,
                                 resident=partial(_holding, held[name], FREE[name]))
        server, port = await start_server(
            "127.0.0.1:0", [partial(_register, servicer)], ["comfymesh.v1.Stage"], internal_secret="")
        servers.append(server)
        addresses.append(f"127.0.0.1:{port}")
    yield addresses, held
    for server in servers:
        await server.stop(grace=None)


async def test_describe_advertises_resident_models_and_free_memory(two_replicas: Any) -> None:
    (a, _), held = two_replicas
    held["a"].append("sd15.safetensors")
    pool = ReplicaPool({"diffusion": [a]})
    info = await pool.replicas["diffusion"][0].stub.Describe(stage_pb2.DescribeRequest(), timeout=5)
    assert list(info.resident_models) == ["sd15.safetensors"]
    assert info.free_memory_bytes == FREE["a"]
    await pool.describe("diffusion")
    replica = pool.replicas["diffusion"][0]
    assert replica.models == {"sd15.safetensors"} and replica.free_bytes == FREE["a"]
    assert replica.device == "cpu (a)"


async def test_a_call_goes_to_the_replica_holding_its_model(two_replicas: Any) -> None:
    (a, b), held = two_replicas
    held["b"].append("b.safetensors")
    pool = ReplicaPool({"diffusion": [a, b]})
    # a loader's input may name a subfolder; the stage advertises the bare file name
    for _ in range(3):
        replica = await pool.acquire("diffusion", set(), prefer_model="sdxl/b.safetensors")
        assert replica.address == b
        await pool.release(replica)
    # a model nobody was known to hold: the pool asks the replicas again, and `a` has loaded it meanwhile
    held["a"].append("a.safetensors")
    for _ in range(3):
        replica = await pool.acquire("diffusion", set(), prefer_model="a.safetensors")
        assert replica.address == a
        await pool.release(replica)
    # the holder is busy with one call and still has a free slot: the next call for its model goes there too
    first = await pool.acquire("diffusion", set(), prefer_model="a.safetensors")
    second = await pool.acquire("diffusion", set(), prefer_model="a.safetensors")
    assert first.address == second.address == a
    # its slots full, a call for its model goes to the other replica rather than wait
    third = await pool.acquire("diffusion", set(), prefer_model="a.safetensors")
    assert third.address == b
    for replica in (first, second, third):
        await pool.release(replica)


async def test_with_no_resident_match_calls_spread_by_load(two_replicas: Any) -> None:
    (a, b), held = two_replicas
    held["a"].append("a.safetensors")
    pool = ReplicaPool({"diffusion": [a, b]})
    # a model nobody holds goes where it crowds out nothing (b holds no model); the next call for it, while the
    # first runs, to the replica with fewer calls in flight
    first = await pool.acquire("diffusion", set(), prefer_model="c.safetensors")
    second = await pool.acquire("diffusion", set(), prefer_model="c.safetensors")
    assert (first.address, second.address) == (b, a)
    await pool.release(first)
    await pool.release(second)
    # one after another (nothing in flight): equal replicas take turns
    chosen = []
    for _ in range(4):
        replica = await pool.acquire("diffusion", set())
        chosen.append(replica.address)
        await pool.release(replica)
    assert chosen.count(a) == chosen.count(b) == 2
