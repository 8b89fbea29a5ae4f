"""The gRPC Stage servicer shared by every stage service, and the stage's start-up routine."""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import inspect
import logging
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2

from comfymesh import gctune, trace
from comfymesh.artifacts import ArtifactStore
from comfymesh.catalog import Catalog
from comfymesh.catalog.model_folders import model_folders
from comfymesh.catalog.schema import NodeSet
from comfymesh.config import Settings
from comfymesh.contracts import wirejson
from comfymesh.files import FilesStore, files_problem, open_files
from comfymesh.graph.limits import OutputLimits
from comfymesh.logs import log_fields
from comfymesh.outputs import output_nodes
from comfymesh.rpc import start_server
from comfymesh.rpc.server import ServerConfigError, server_credentials
from comfymesh.rpc.status_codes import BUSY_DETAILS, DRAINING_DETAILS
from comfymesh.stage.node import NodeImpl
from comfymesh.stage.plugins import load_plugins
from comfymesh.stage.runtime import GroupRun
from comfymesh.v1 import stage_pb2, stage_pb2_grpc

log = logging.getLogger("comfymesh.stage")
# what a stage holds now: (resident model file names, free bytes of its device)
Residency = Callable[[], tuple[list[str], int]]


def plugin_version(version: str, served: NodeSet, own: NodeSet) -> str:
    """The stage's code version, changed by the source of every plugin node it serves too."""
    plugins = sorted(name for name in served.impls if name not in own.impls and name not in output_nodes.impls)
    if not plugins:
        return version
    digest = hashlib.sha256(version.encode())
    for name in plugins:
        source = inspect.getsourcefile(served.impls[name])
        digest.update(Path(source).read_bytes() if source else name.encode())
    return digest.hexdigest()[:16]


def code_version(package_dir: Path) -> str:
    """A digest of the stage's own source: part of every cache signature, so new code recomputes."""
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class StageServicer(stage_pb2_grpc.StageServicer):
    """Runs groups with at most `slots` at once (default COMFYMESH_STAGE_SLOTS); a cancelled call stops its
    nodes at the next step. A call beyond the slots is refused as busy (RESOURCE_EXHAUSTED `comfymesh-busy`),
    not queued, so the orchestrator can try another replica; a draining stage refuses every new call
    (UNAVAILABLE `comfymesh-draining`)."""

    def __init__(self, stage: str, nodes: NodeSet, settings: Settings, version: str,
                 device: str = "cpu", slots: int | None = None, resident: Residency | None = None) -> None:
        self.stage = stage
        # asked at every Describe: (model files held, free device bytes), so the orchestrator places by model
        self.resident = resident
        # output nodes run in whichever stage produced their image, so every stage hosts them
        self.node_set = NodeSet(stage)
        self.node_set.extend(output_nodes)
        self.node_set.extend(nodes)
        self.plugin_errors = load_plugins(stage, self.node_set)
        self.nodes: dict[str, NodeImpl] = self.node_set.impls
        self.settings = settings
        self.version = plugin_version(version, self.node_set, nodes)
        self.device = device
        self.declared = self.node_set.object_info()
        self.catalog = Catalog(settings.home, self.declared, model_folders(settings))
        self.store = ArtifactStore(settings.artifacts)
        # outputs go to the shared files store when one is configured; None: the data home's folders
        self.files: FilesStore | None = (open_files(settings.files, settings.files_options())
                                         if settings.files_url else None)
        self.limits = OutputLimits(settings.max_pixels, settings.max_batch)
        self.slot_count = slots or settings.stage_slots
        self.busy_slots = 0  # calls whose nodes have not all reported yet
        self.calls = 0  # calls not yet ended (a drain waits for none)
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.executor = ThreadPoolExecutor(max_workers=self.slot_count, thread_name_prefix=stage)

    async def RunStage(self, request: stage_pb2.StageRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[stage_pb2.StageEvent]:
        trace.mark("stage.call")
        if self.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, DRAINING_DETAILS)
        if self.busy_slots >= self.slot_count:
            log.info("busy: call refused", extra=log_fields(job=request.job_id, group=request.group_id,
                                                             slots=self.slot_count))
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, BUSY_DETAILS)
        self.busy_slots += 1
        self.calls += 1
        self._idle.clear()
        # the slot is free again once every node reported (done or failed), before that last event is sent:
        # the caller's next call may come the moment it reads it, while this call's stream is still closing
        pending = {call.node_id for call in request.nodes}
        holding = True

        def free_slot() -> None:
            nonlocal holding
            if holding:
                holding = False
                self.busy_slots -= 1

        try:
            log.info("RunStage", extra=log_fields(job=request.job_id, user=request.user, group=request.group_id,
                                                  attempt=request.attempt,
                                                  nodes=[call.node_id for call in request.nodes]))
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue[stage_pb2.StageEvent | None] = asyncio.Queue()
            cancelled = threading.Event()

            def deliver(event: stage_pb2.StageEvent | None) -> None:
                if event is None or event.HasField("failure"):
                    free_slot()
                elif event.HasField("done"):
                    pending.discard(event.done.node_id)
                    if not pending:
                        free_slot()
                queue.put_nowait(event)

            def emit(event: stage_pb2.StageEvent | None) -> None:
                loop.call_soon_threadsafe(deliver, event)

            def run() -> None:
                try:
                    GroupRun(request, self.nodes, self.catalog, self.store, self.settings.home, emit,
                             cancelled, self.limits, self.files).run()
                finally:
                    emit(None)

            # in this call's context: the nodes' spans are children of the call's
            work = loop.run_in_executor(self.executor, contextvars.copy_context().run, run)
            try:
                while (event := await queue.get()) is not None:
                    yield event
                await work
            finally:
                # the caller went away or cancelled: stop the nodes at their next step
                cancelled.set()
        finally:
            free_slot()
            self.calls -= 1
            if self.calls == 0:
                self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """Refuse new calls and wait (up to `timeout`) for those in flight to end; whether they all did."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def Describe(self, request: stage_pb2.DescribeRequest,
                       context: grpc.aio.ServicerContext) -> stage_pb2.DescribeResponse:
        models, free = self.resident() if self.resident is not None else ([], 0)
        return stage_pb2.DescribeResponse(resident_models=models, free_memory_bytes=free,
                                          stage=self.stage, node_types=sorted(self.nodes),
                                          slots=self.slot_count, code_version=self.version,
                                          device=self.device, nodes_json=wirejson.dumps(self.declared),
                                          plugin_errors=[str(error) for error in self.plugin_errors])


async def serve_stage(servicer: StageServicer, listen: str,
                      extra: list[Callable[[grpc.aio.Server], None]] | None = None,
                      extra_names: list[str] | None = None) -> None:
    """Serve until SIGTERM/SIGINT, printing one line that says where the stage listens; then drain: NOT_SERVING
    at once, the calls in flight finish (up to COMFYMESH_STAGE_DRAIN_S), exit."""
    registrars = [lambda server: stage_pb2_grpc.add_StageServicer_to_server(servicer, server), *(extra or [])]
    health_servicer = health.aio.HealthServicer()
    server, port = await start_server(listen, registrars, ["comfymesh.v1.Stage", *(extra_names or [])],
                                      health_servicer=health_servicer)
    remote_models = servicer.catalog.folders.remote
    stores = [store for store in (servicer.files, remote_models.store if remote_models else None) if store]
    if any([await asyncio.to_thread(files_problem, store) is not None for store in stores]):
        # outputs could not be saved, or models not fetched: callers watching health send this stage nothing
        # (restart once fixed)
        for name in ["", "comfymesh.v1.Stage", *(extra_names or [])]:
            await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    host = listen.rsplit(":", 1)[0]
    print(f"comfymesh {servicer.stage} stage listening on {host}:{port} ({len(servicer.nodes)} node types, "
          f"device {servicer.device})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await shut_down(servicer, server, health_servicer, servicer.settings.stage_drain_s)


async def shut_down(servicer: StageServicer, server: grpc.aio.Server, health_servicer: health.aio.HealthServicer,
                    drain_s: float) -> None:
    """Answer NOT_SERVING on every service (callers watching health stop sending), let the calls in flight
    finish for up to `drain_s`, then stop the server."""
    await health_servicer.enter_graceful_shutdown()
    log.info("draining", extra=log_fields(stage=servicer.stage, calls=servicer.calls, drain_s=drain_s))
    if not await servicer.drain(drain_s):
        log.warning("drain time over: stopping with calls in flight",
                    extra=log_fields(stage=servicer.stage, calls=servicer.calls))
    await server.stop(grace=2)


def stage_main(stage: str, load_nodes: Callable[[], NodeSet], package_dir: Path,
               default_listen: str, device: Callable[[], str] = lambda: "cpu",
               extra: Callable[[StageServicer], tuple[list[Callable[[grpc.aio.Server], None]], list[str]]]
               | None = None, slots: Callable[[Settings], int] | None = None,
               resident: Residency | None = None) -> None:
    """Command-line entry of a stage service: `--help`, `--listen`, logging, serve. `slots`: how many calls
    the stage runs at once, from the settings (default COMFYMESH_STAGE_SLOTS)."""
    import argparse

    from comfymesh.config import get_settings
    from comfymesh.logs import setup_logging

    parser = argparse.ArgumentParser(prog=f"python -m comfymesh.{stage}",
                                     description=f"Serve the comfymesh {stage} stage over gRPC.")
    parser.add_argument("--listen", default=default_listen, help="host:port to serve on (default %(default)s)")
    args = parser.parse_args()
    settings = get_settings()
    setup_logging(stage, settings.log_level, settings.log_json)
    trace.start_tracing(stage)
    try:
        server_credentials(args.listen, settings)  # refused before the slow start-up (a model warm-up)
    except ServerConfigError as exc:
        sys.exit(f"comfymesh {stage} stage: {exc}")
    # The node thread, the PNG encoder's threads and the gRPC loop hand the GIL back and forth; with the
    # default 5 ms switch interval a thread leaving C code (zlib, torch) can wait that long for it
    # behind a thread running Python (measured: a 512² PNG encode, 15 ms alone, took 130 ms next to one
    # busy Python thread; 29 ms at 0.5 ms).
    sys.setswitchinterval(settings.gil_switch_interval_s)

    async def run() -> None:
        servicer = StageServicer(stage, load_nodes(), settings, code_version(package_dir), device(),
                                 slots(settings) if slots else None, resident)
        registrars, names = extra(servicer) if extra else ([], [])
        gctune.settle(gctune.parse_thresholds(settings.gc_thresholds))
        await serve_stage(servicer, args.listen, registrars, names)

    asyncio.run(run())
