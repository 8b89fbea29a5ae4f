"""DNS-discovered stage replicas, busy answers and draining, with real stage servers on 127.0.0.x (all of
127/8 is loopback on Linux) and names resolved through a hosts file the test writes."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from comfymesh.catalog.schema import Int, NodeSet, Output
from comfymesh.config import Settings
from comfymesh.config.discovery import parse_dns_target
from comfymesh.contracts import wirejson
from comfymesh.orchestrator.replicas import ReplicaPool
from comfymesh.rpc import open_channel, start_server
from comfymesh.rpc.discovery import hosts_file_entries, make_resolver
from comfymesh.rpc.status_codes import BUSY_DETAILS, DRAINING_DETAILS, refusal
from comfymesh.stage.server import StageServicer, shut_down
from comfymesh.v1 import stage_pb2, stage_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING


def test_a_hosts_file_names_addresses_before_dns(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("# test hosts\n127.0.0.2 stage.test other\n::1 stage.test\n127.0.0.3\tstage.test # b\n")
    assert hosts_file_entries(hosts, "stage.test") == ["127.0.0.2", "127.0.0.3"]
    resolve = make_resolver(str(hosts))
    assert resolve("other") == ["127.0.0.2"]
    assert resolve("localhost") == ["127.0.0.1"]  # not in the file: DNS (here /etc/hosts) answers
    assert resolve("no-such-host.invalid") == []
    assert parse_dns_target("dns:///stage.test:50061").port == 50061
    with pytest.raises(ValueError, match="dns:///name:port"):
        parse_dns_target("dns:///stage.test")


def test_a_malformed_dns_replica_address_is_refused_at_start_up(configure: Callable[..., Settings]) -> None:
    with pytest.raises(SystemExit, match=r"COMFYMESH_IMAGING_REPLICAS: 'dns:///imaging' is not a DNS replica"):
        configure(imaging_replicas="127.0.0.1:1,dns:///imaging")
    assert configure(imaging_replicas="127.0.0.1:1, dns:///imaging:50061").replicas("imaging") == [
        "127.0.0.1:1", "dns:///imaging:50061"]


def _gate_nodes(gates: dict[int, threading.Event]) -> NodeSet:
    """A node that holds its call until the test opens gate `seed` (seed 0: never waits)."""
    nodes = NodeSet("imaging")

    @nodes.define("TestGate", category="testing", inputs=[Int("seed", 0)], outputs=[Output("INT")])
    def gate(ctx: Any, seed: int) -> tuple[int]:
        event = gates.get(seed)
        while event is not None and not event.wait(0.05):
            ctx.check_cancelled()
        return (seed,)

    return nodes


def _request(seed: int) -> stage_pb2.StageRequest:
    return stage_pb2.StageRequest(job_id=f"job{seed}", group_id="g", nodes=[stage_pb2.NodeCall(
        node_id="1", class_type="TestGate", literal_inputs_json=wirejson.dumps({"seed": seed}))])


async def _run(stub: stage_pb2_grpc.StageStub, seed: int) -> list[str]:
    return [event.WhichOneof("event") for event in [e async for e in stub.RunStage(_request(seed))]]


@dataclass
class Stage:
    servicer: StageServicer
    server: grpc.aio.Server
    health: health.aio.HealthServicer


@pytest.fixture
def settings(configure: Callable[..., Settings], tmp_path: Path) -> Settings:
    return configure(home=str(tmp_path / "home"))


@pytest.fixture
def gates() -> Iterator[dict[int, threading.Event]]:
    gates: dict[int, threading.Event] = {}
    yield gates
    for gate in gates.values():  # a failed test must not leave node threads waiting
        gate.set()


@pytest.fixture
async def start_stage(settings: Settings, gates: dict[int, threading.Event]) -> AsyncIterator[
        Callable[..., Any]]:
    started: list[Stage] = []

    async def start(listen: str, slots: int = 2) -> Stage:
        servicer = StageServicer("imaging", _gate_nodes(gates), settings, "test", slots=slots)
        health_servicer = health.aio.HealthServicer()
        server, _ = await start_server(
            listen, [lambda s: stage_pb2_grpc.add_StageServicer_to_server(servicer, s)], ["comfymesh.v1.Stage"],
            internal_secret="", health_servicer=health_servicer)
        started.append(Stage(servicer, server, health_servicer))
        return started[-1]

    yield start
    for stage in started:
        await stage.server.stop(grace=None)


def _port_free_on(*hosts: str) -> int:
    with socket.socket() as sock:
        sock.bind((hosts[0], 0))
        port = int(sock.getsockname()[1])
    for host in hosts[1:]:
        with socket.socket() as sock:
            sock.bind((host, port))
    return port


async def _until(condition: Callable[[], bool], timeout: float) -> float:
    """Seconds until `condition` holds (its events come over gRPC); fails after `timeout`."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, "condition not met in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def _call(pool: ReplicaPool, seed: int = 0) -> str:
    replica = await pool.acquire("imaging", avoid=set())
    try:
        assert await _run(replica.stub, seed) == ["started", "done"]
    finally:
        await pool.release(replica)
    return replica.address


async def test_replicas_follow_dns_and_health_and_a_draining_one_finishes_its_calls(
        tmp_path: Path, start_stage: Callable[..., Any], gates: dict[int, threading.Event]) -> None:
    port = _port_free_on("127.0.0.2", "127.0.0.3")
    first, second = f"127.0.0.2:{port}", f"127.0.0.3:{port}"
    await start_stage(first)
    other = await start_stage(second)
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.2 stage.test\n")
    pool = ReplicaPool({"imaging": [f"dns:///stage.test:{port}"]}, make_resolver(str(hosts)), refresh_s=0.5)
    assert pool.discovery is not None
    try:
        await pool.describe("imaging")
        await _until(lambda: all(r.serving for r in pool.replicas["imaging"]), 5)
        assert {await _call(pool) for _ in range(4)} == {first}

        hosts.write_text("127.0.0.2 stage.test\n127.0.0.3 stage.test\n")  # a host is added
        added = time.monotonic()
        while second not in {await _call(pool) for _ in range(2)}:
            assert time.monotonic() - added < 10, "the added host got no call within 10 s"
        assert [r.slots for r in pool.replicas["imaging"]] == [2, 2]  # each discovered replica described

        # a call in flight on the second host, then that host drains (its SIGTERM path)
        gates[7] = threading.Event()
        held = await pool.acquire("imaging", avoid={first})
        assert held.address == second
        in_flight = asyncio.create_task(_run(held.stub, 7))
        await _until(lambda: other.servicer.calls == 1, 5)
        draining = asyncio.create_task(shut_down(other.servicer, other.server, other.health, drain_s=30))
        assert await _until(lambda: not held.serving, 2) < 2
        assert {await _call(pool) for _ in range(6)} == {first}
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _run(held.stub, 0)
        assert refusal(refused.value) == DRAINING_DETAILS
        assert not draining.done()
        gates[7].set()
        assert await in_flight == ["started", "done"]  # finished during the drain
        await pool.release(held)
        await asyncio.wait_for(draining, 10)

        hosts.write_text("127.0.0.2 stage.test\n")  # the drained host leaves DNS
        await _until(lambda: [r.address for r in pool.replicas["imaging"]] == [first], 5)
    finally:
        await pool.discovery.close()


async def test_a_host_that_leaves_dns_gets_no_new_call_and_is_dropped_after_its_calls(
        tmp_path: Path, start_stage: Callable[..., Any], gates: dict[int, threading.Event]) -> None:
    port = _port_free_on("127.0.0.2", "127.0.0.3")
    first, second = f"127.0.0.2:{port}", f"127.0.0.3:{port}"
    await start_stage(first)
    await start_stage(second)
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.2 stage.test\n127.0.0.3 stage.test\n")
    pool = ReplicaPool({"imaging": [f"dns:///stage.test:{port}"]}, make_resolver(str(hosts)), refresh_s=0.2)
    assert pool.discovery is not None
    try:
        await pool.describe("imaging")
        await _until(lambda: len(pool.replicas["imaging"]) == 2 and all(r.serving for r in pool.replicas["imaging"]), 5)
        gates[5] = threading.Event()
        held = await pool.acquire("imaging", avoid={first})
        assert held.address == second
        in_flight = asyncio.create_task(_run(held.stub, 5))
        hosts.write_text("127.0.0.2 stage.test\n")
        await _until(lambda: held.retired, 5)
        assert held in pool.replicas["imaging"]  # kept while its call runs
        assert {await _call(pool) for _ in range(4)} == {first}
        gates[5].set()
        assert await in_flight == ["started", "done"]
        await pool.release(held)
        assert [r.address for r in pool.replicas["imaging"]] == [first]
    finally:
        await pool.discovery.close()


async def test_a_name_with_no_records_fails_at_once(tmp_path: Path, settings: Settings) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.2 other.test\n")
    pool = ReplicaPool({"imaging": ["dns:///nothing.invalid:1"]}, make_resolver(str(hosts)))
    assert pool.configured() == ["imaging"]
    assert pool.discovery is not None
    started = time.monotonic()
    try:
        with pytest.raises(Exception, match=r"no imaging replica resolved from dns:///nothing\.invalid:1"):
            await pool.acquire("imaging", avoid=set())
    finally:
        await pool.discovery.close()
    assert time.monotonic() - started < 5


async def test_a_stage_with_no_free_slot_answers_busy(start_stage: Callable[..., Any],
                                                      gates: dict[int, threading.Event]) -> None:
    listen = f"127.0.0.1:{_port_free_on('127.0.0.1')}"
    stage = await start_stage(listen, slots=1)
    stub = stage_pb2_grpc.StageStub(open_channel(listen, internal_secret=""))
    gates[3] = threading.Event()
    holding = asyncio.create_task(_run(stub, 3))
    await _until(lambda: stage.servicer.busy_slots == 1, 5)
    with pytest.raises(grpc.aio.AioRpcError) as busy:
        await _run(stub, 0)  # answered at once, not queued behind the held call
    assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refusal(busy.value) == BUSY_DETAILS
    gates[3].set()
    assert await holding == ["started", "done"]
    # the slot is free once the last node reported: the next call is taken, however soon it comes
    for _ in range(5):
        assert await _run(stub, 0) == ["started", "done"]


async def test_a_dns_channel_leaves_out_a_server_that_is_not_serving(settings: Settings) -> None:
    """The gateway's dns:/// orchestrator channel: round_robin with client-side health checking (pick_first,
    gRPC's default, would keep calling a NOT_SERVING server)."""
    port = _port_free_on("127.0.0.1")
    health_servicer = health.aio.HealthServicer()
    server, _ = await start_server(f"127.0.0.1:{port}", [], [], internal_secret="", health_servicer=health_servicer)
    channel = open_channel(f"dns:///localhost:{port}", internal_secret="")
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        assert (await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)).status == SERVING
        await health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        refused_at = time.monotonic()
        while True:  # the health stream's update reaches the channel
            try:
                await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                break
            assert time.monotonic() - refused_at < 5, "calls still reach a NOT_SERVING server"
        await health_servicer.set("", SERVING)
        assert (await stub.Check(health_pb2.HealthCheckRequest(), timeout=5,
                                 wait_for_ready=True)).status == SERVING
    finally:
        await channel.close()
        await server.stop(grace=None)
