"""Stage replicas: the orchestrator picks one with a free slot (backpressure lives here, not in stages)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2_grpc

from comfymesh.contracts.errors import StageUnavailableError
from comfymesh.rpc import open_channel
from comfymesh.v1 import stage_pb2, stage_pb2_grpc

log = logging.getLogger("comfymesh.orchestrator")


@dataclass
class Replica:
    stage: str
    address: str
    stub: stage_pb2_grpc.StageStub
    health: health_pb2_grpc.HealthStub  # the same channel's gRPC health service (readiness)
    slots: int = 1
    in_flight: int = 0
    down_until: float = 0.0
    failures: int = 0
    code_version: str = ""
    device: str = ""
    models: set[str] = field(default_factory=set)

    @property
    def available(self) -> bool:
        return self.in_flight < self.slots and time.monotonic() >= self.down_until


class ReplicaPool:
    def __init__(self, replicas: dict[str, list[str]]) -> None:
        self.replicas: dict[str, list[Replica]] = {
            stage: [_replica(stage, address) for address in addresses] for stage, addresses in replicas.items()}
        self._changed = asyncio.Condition()
        self._turns: dict[str, int] = {}
        # what /metrics reports: calls waiting for a free slot, and finished calls by (stage, ok|error)
        self.waiting: dict[str, int] = dict.fromkeys(self.replicas, 0)
        self.finished: Counter[tuple[str, str]] = Counter()
        # told every Describe answer (the node catalog keeps the stages' node declarations)
        self.on_describe: Callable[[str, stage_pb2.DescribeResponse], None] | None = None

    async def describe(self, stage: str, timeout: float = 30.0, fresh: bool = False) -> str:
        """The stage's code version (asks a live replica, waiting for one up to `timeout`, unless a
        replica answered before and `fresh` is not asked for)."""
        replicas = self.replicas.get(stage)
        if not replicas:
            raise StageUnavailableError(f"no {stage} stage is configured (set COMFYMESH_{stage.upper()}_REPLICAS)")
        known = [r.code_version for r in replicas if r.code_version]
        if known and not fresh:
            return known[0]
        deadline = time.monotonic() + timeout
        while True:
            for replica in replicas:
                try:
                    info = await replica.stub.Describe(stage_pb2.DescribeRequest(), timeout=3)
                except grpc.aio.AioRpcError:
                    continue
                replica.slots, replica.code_version, replica.device = max(1, info.slots), info.code_version, info.device
                if self.on_describe is not None:
                    self.on_describe(stage, info)
                return info.code_version
            if time.monotonic() > deadline:
                raise StageUnavailableError(f"no {stage} stage replica answers at "
                                            f"{', '.join(r.address for r in replicas)}; is it running?")
            await asyncio.sleep(0.2)

    async def acquire(self, stage: str, avoid: set[str], prefer_model: str = "") -> Replica:
        """Wait for a replica with a free slot: one not in `avoid` first, then one holding the model."""
        self.waiting[stage] = self.waiting.get(stage, 0) + 1
        try:
            return await self._acquire(stage, avoid, prefer_model)
        finally:
            self.waiting[stage] -= 1

    async def _acquire(self, stage: str, avoid: set[str], prefer_model: str) -> Replica:
        await self.describe(stage, timeout=120)
        while True:
            async with self._changed:
                replicas = self.replicas[stage]
                free = [r for r in replicas if r.available]
                if free:
                    # equal candidates take turns, so load spreads when no replica holds the model
                    turn = self._turns.get(stage, 0)
                    self._turns[stage] = turn + 1
                    free.sort(key=lambda r: (r.address in avoid, prefer_model not in r.models, r.in_flight,
                                             (replicas.index(r) - turn) % len(replicas)))
                    chosen = free[0]
                    chosen.in_flight += 1
                    return chosen
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=0.5)

    async def release(self, replica: Replica, *, failed: bool = False) -> None:
        async with self._changed:
            replica.in_flight -= 1
            self.finished[(replica.stage, "error" if failed else "ok")] += 1
            if failed:
                # back off a dead replica so retries go elsewhere (or wait for its restart)
                replica.failures += 1
                replica.down_until = time.monotonic() + min(0.25 * 2 ** replica.failures, 5.0)
                replica.code_version = ""
            else:
                replica.failures = 0
            self._changed.notify_all()

    def all(self) -> list[Replica]:
        return [r for replicas in self.replicas.values() for r in replicas]


def _replica(stage: str, address: str) -> Replica:
    channel = open_channel(address)
    return Replica(stage, address, stage_pb2_grpc.StageStub(channel), health_pb2_grpc.HealthStub(channel))
