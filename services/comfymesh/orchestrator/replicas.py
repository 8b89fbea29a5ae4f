"""Stage replicas: the orchestrator picks one with a free slot (backpressure lives here; a stage with no free
slot refuses a call as busy). A `dns:///name:port` address stands for the replicas DNS names (discovery.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2_grpc

from comfymesh.config.discovery import DnsTarget, is_dns_target, parse_dns_target
from comfymesh.contracts.errors import StageUnavailableError
from comfymesh.rpc import open_channel
from comfymesh.rpc.discovery import Resolver
from comfymesh.v1 import stage_pb2, stage_pb2_grpc

if TYPE_CHECKING:
    from comfymesh.orchestrator.discovery import StageDiscovery

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
    models: set[str] = field(default_factory=set)  # model files it holds: advertised by Describe, or learned
    free_bytes: int = 0  # its device's free memory when it last answered Describe
    # discovered replicas: SERVING per their health watch; retired once DNS no longer names them
    serving: bool = True
    retired: bool = False
    busy: int = 0  # busy answers in a row (their backoff)

    def holds(self, model: str) -> bool:
        """Whether its cache holds `model` (a loader's file input; a stage advertises bare file names)."""
        return bool(model) and (model in self.models or model.rsplit("/", 1)[-1] in self.models)

    def described(self, info: stage_pb2.DescribeResponse) -> None:
        self.slots, self.code_version, self.device = max(1, info.slots), info.code_version, info.device
        self.models.update(info.resident_models)
        self.free_bytes = info.free_memory_bytes

    @property
    def available(self) -> bool:
        return (self.in_flight < self.slots and self.serving and not self.retired
                and time.monotonic() >= self.down_until)


class ReplicaPool:
    def __init__(self, replicas: dict[str, list[str]], resolve: Resolver | None = None,
                 refresh_s: float = 5.0) -> None:
        """`replicas`: each stage's addresses, `host:port` or `dns:///name:port` (re-resolved every
        `refresh_s` through `resolve`, default COMFYMESH_HOSTS_FILE then DNS)."""
        self.replicas: dict[str, list[Replica]] = {
            stage: [new_replica(stage, a) for a in addresses if not is_dns_target(a)]
            for stage, addresses in replicas.items()}
        self.targets: dict[str, list[DnsTarget]] = {
            stage: [parse_dns_target(a) for a in addresses if is_dns_target(a)]
            for stage, addresses in replicas.items()}
        self._changed = asyncio.Condition()
        self._turns: dict[str, int] = {}
        # what /metrics reports: calls waiting for a free slot, and finished calls by (stage, ok|error)
        self.waiting: dict[str, int] = dict.fromkeys(self.replicas, 0)
        self.finished: Counter[tuple[str, str]] = Counter()
        # told every Describe answer (the node catalog keeps the stages' node declarations)
        self.on_describe: Callable[[str, stage_pb2.DescribeResponse], None] | None = None
        self.discovery: StageDiscovery | None = None
        if any(self.targets.values()):
            from comfymesh.orchestrator.discovery import StageDiscovery  # here: it imports this module
            self.discovery = StageDiscovery(self, resolve, refresh_s)

    def configured(self) -> list[str]:
        """The stages given replica addresses (a `dns:///` one may name no replica right now)."""
        return [stage for stage in self.replicas if self.replicas[stage] or self.targets.get(stage)]

    def unresolved(self, stage: str) -> StageUnavailableError:
        names = ", ".join(str(target) for target in self.targets[stage])
        return StageUnavailableError(f"no {stage} replica resolved from {names}", non_retryable=True)

    async def changed(self) -> None:
        """Wake the calls waiting for a replica (one appeared, went SERVING, or was retired)."""
        async with self._changed:
            self._changed.notify_all()

    async def describe(self, stage: str, timeout: float = 30.0, fresh: bool = False) -> str:
        """The stage's code version (asks a live replica, waiting for one up to `timeout`, unless a
        replica answered before and `fresh` is not asked for)."""
        if self.discovery is not None:
            await self.discovery.start()
        replicas = self.replicas.get(stage)
        if not replicas and self.targets.get(stage):
            raise self.unresolved(stage)
        if not replicas:
            raise StageUnavailableError(f"no {stage} stage is configured (set COMFYMESH_{stage.upper()}_REPLICAS)")
        known = [r.code_version for r in replicas if r.code_version]
        if known and not fresh:
            return known[0]
        deadline = time.monotonic() + timeout
        while True:
            for replica in list(replicas):
                try:
                    info = await replica.stub.Describe(stage_pb2.DescribeRequest(), timeout=3)
                except grpc.aio.AioRpcError:
                    continue
                replica.described(info)
                if self.on_describe is not None:
                    self.on_describe(stage, info)
                return info.code_version
            if not replicas and self.targets.get(stage):
                raise self.unresolved(stage)
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

    async def residency(self, stage: str) -> None:
        """Ask every replica of the stage what it holds now (a model seen for the first time may already be
        resident somewhere: loaded by another orchestrator, or before this one started)."""
        async def ask(replica: Replica) -> None:
            with contextlib.suppress(grpc.aio.AioRpcError):
                replica.described(await replica.stub.Describe(stage_pb2.DescribeRequest(), timeout=1))

        await asyncio.gather(*(ask(r) for r in self.replicas.get(stage, []) if not r.retired))

    async def _acquire(self, stage: str, avoid: set[str], prefer_model: str) -> Replica:
        await self.describe(stage, timeout=120)
        replicas = self.replicas[stage]
        if prefer_model and len(replicas) > 1 and not any(r.holds(prefer_model) for r in replicas):
            await self.residency(stage)
        while True:
            async with self._changed:
                replicas = self.replicas[stage]
                free = [r for r in replicas if r.available]
                if free:
                    # the model's holder first; else the least loaded, then the one holding fewest models (a new
                    # model there evicts no one's); equal candidates take turns, so load spreads
                    turn = self._turns.get(stage, 0)
                    self._turns[stage] = turn + 1
                    free.sort(key=lambda r: (r.address in avoid, not r.holds(prefer_model), r.in_flight,
                                             len(r.models) if prefer_model else 0,
                                             (replicas.index(r) - turn) % len(replicas)))
                    chosen = free[0]
                    chosen.in_flight += 1
                    return chosen
                if not replicas and self.targets.get(stage):
                    raise self.unresolved(stage)
                # a busy or failed replica's backoff may end before anything notifies
                backoff = [r.down_until for r in replicas if r.down_until > time.monotonic()]
                wait = min([0.5, *(until - time.monotonic() for until in backoff)])
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(wait, 0.01)):
                        await self._changed.wait()

    async def release(self, replica: Replica, *, failed: bool = False) -> None:
        async with self._changed:
            replica.in_flight -= 1
            self.finished[(replica.stage, "error" if failed else "ok")] += 1
            if failed:
                # back off a dead replica so retries go elsewhere (or wait for its restart)
                replica.failures += 1
                replica.down_until = time.monotonic() + min(0.25 * 2 ** replica.failures, 5.0)
                replica.code_version = ""
                if self.discovery is not None:
                    self.discovery.wake()  # the name may have moved: re-resolve at once
            else:
                replica.failures = 0
                replica.busy = 0
            if replica.retired and replica.in_flight == 0 and self.discovery is not None:
                self.discovery.remove(replica)
            self._changed.notify_all()

    async def refused(self, replica: Replica, *, draining: bool) -> None:
        """A call the replica refused before running it: no failure, but no call there for a while (busy:
        a backoff growing to 1 s; draining: it is going away, its health watch or restart brings it back)."""
        async with self._changed:
            replica.in_flight -= 1
            if draining:
                replica.down_until = time.monotonic() + 2.0
            else:
                replica.busy += 1
                replica.down_until = time.monotonic() + min(0.05 * 2 ** replica.busy, 1.0)
            if replica.retired and replica.in_flight == 0 and self.discovery is not None:
                self.discovery.remove(replica)
            self._changed.notify_all()

    def all(self) -> list[Replica]:
        return [r for replicas in self.replicas.values() for r in replicas]


def new_replica(stage: str, address: str) -> Replica:
    channel = open_channel(address)
    return Replica(stage, address, stage_pb2_grpc.StageStub(channel), health_pb2_grpc.HealthStub(channel))
