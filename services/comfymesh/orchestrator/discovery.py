"""DNS-discovered stage replicas: every `dns:///name:port` of the pool re-resolved every few seconds (and at once
when a call finds a replica unavailable), each discovered replica's gRPC health watched.

A replica that appears gets calls once its health says SERVING; one that goes NOT_SERVING gets no new call;
one that leaves DNS is retired: no new call, and it is dropped once its calls in flight are done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from grpc_health.v1 import health_pb2

from comfymesh.config import get_settings
from comfymesh.logs import log_fields
from comfymesh.orchestrator.replicas import Replica, ReplicaPool, new_replica
from comfymesh.rpc.discovery import Resolver, expand, make_resolver
from comfymesh.v1 import stage_pb2

log = logging.getLogger("comfymesh.orchestrator")
# a health watch that failed (the replica is down or restarting) is opened again after this long
WATCH_RETRY_S = 0.5


class StageDiscovery:
    """Keeps `pool.replicas` equal to what the pool's DNS targets resolve to."""

    def __init__(self, pool: ReplicaPool, resolve: Resolver | None, refresh_s: float) -> None:
        self.pool = pool
        self.resolve = resolve or make_resolver(get_settings().hosts_file)
        self.refresh_s = refresh_s
        self.watches: dict[int, asyncio.Task[None]] = {}  # by id(replica)
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._first = asyncio.Lock()

    async def start(self) -> None:
        """Resolve once and start the refresh loop (first call only; later calls return at once)."""
        if self._loop_task is not None:
            return
        async with self._first:
            if self._loop_task is None:
                await self.refresh()
                self._loop_task = asyncio.get_running_loop().create_task(self._run())

    def wake(self) -> None:
        self._wake.set()

    async def close(self) -> None:
        tasks = [t for t in (self._loop_task, *self.watches.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.refresh_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.refresh()
            except Exception:  # a resolver failure must not end discovery
                log.exception("re-resolving the stage replicas failed")

    async def refresh(self) -> None:
        """Resolve every target; add the replicas that appeared, retire those that left."""
        for stage, targets in self.pool.targets.items():
            if not targets:
                continue
            found: list[str] = []
            for target in targets:
                found += await asyncio.to_thread(expand, target, self.resolve)
            self._apply(stage, found)
        await self.pool.changed()

    def _apply(self, stage: str, found: list[str]) -> None:
        replicas = self.pool.replicas[stage]
        known = {r.address: r for r in replicas if id(r) in self.watches}  # the discovered ones
        for address in found:
            replica = known.get(address)
            if replica is None:
                replica = new_replica(stage, address)
                replica.serving = False  # until its health says SERVING
                replicas.append(replica)
                self.watches[id(replica)] = asyncio.get_running_loop().create_task(self._watch(replica))
                log.info("stage replica discovered", extra=log_fields(stage=stage, replica=address))
            elif replica.retired:  # back before its last call ended
                replica.retired = False
        for address, replica in known.items():
            if address not in found and not replica.retired:
                replica.retired = True
                log.info("stage replica left DNS", extra=log_fields(stage=stage, replica=address,
                                                                    in_flight=replica.in_flight))
                if replica.in_flight == 0:
                    self.remove(replica)

    def remove(self, replica: Replica) -> None:
        """Drop a retired replica that has no call in flight (its health watch ends with it)."""
        with contextlib.suppress(ValueError):
            self.pool.replicas[replica.stage].remove(replica)
        watch = self.watches.pop(id(replica), None)
        if watch is not None:
            watch.cancel()

    async def _describe(self, replica: Replica) -> None:
        """Learn a new replica's slots (and code version) before it takes calls; one slot if it won't say."""
        with contextlib.suppress(grpc.aio.AioRpcError):
            info = await replica.stub.Describe(stage_pb2.DescribeRequest(), timeout=3)
            replica.slots, replica.code_version, replica.device = max(1, info.slots), info.code_version, info.device

    async def _watch(self, replica: Replica) -> None:
        """Follow the replica's health stream: SERVING lets calls go there, anything else stops them."""
        request = health_pb2.HealthCheckRequest(service="")
        while True:
            try:
                async for reply in replica.health.Watch(request, wait_for_ready=True):
                    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
                    if serving and not replica.code_version:
                        await self._describe(replica)
                    if serving != replica.serving:
                        log.info("stage replica health", extra=log_fields(
                            stage=replica.stage, replica=replica.address, serving=serving))
                    replica.serving = serving
                    await self.pool.changed()
            except grpc.aio.AioRpcError:
                pass
            if replica.serving:
                replica.serving = False
                await self.pool.changed()
            await asyncio.sleep(WATCH_RETRY_S)  # a retry's backoff, not a wait for readiness
