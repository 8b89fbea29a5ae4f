"""`python -m comfymesh.orchestrator`: serve the Orchestrator gRPC API and drive the job queue."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from comfymesh import gctune, trace
from comfymesh.config import get_settings
from comfymesh.jobs import DamagedDatabaseError
from comfymesh.jobs.backends import UnknownDatabaseSchemeError, describe, open_job_store
from comfymesh.jobs.postgres.migrations import SchemaTooNewError
from comfymesh.jobs.protocol import DatabaseUnreachableError
from comfymesh.logs import setup_logging
from comfymesh.orchestrator.metrics import serve_metrics
from comfymesh.orchestrator.replicas import ReplicaPool
from comfymesh.orchestrator.scheduler import Scheduler
from comfymesh.orchestrator.service import OrchestratorServicer
from comfymesh.rpc import start_server
from comfymesh.rpc.server import ServerConfigError, server_credentials
from comfymesh.v1 import orchestrator_pb2_grpc

log = logging.getLogger("comfymesh.orchestrator")


class RecoveryError(Exception):
    """Re-queueing the jobs a previous run left behind failed: serving now would leave them stuck."""


async def serve(listen: str) -> None:
    settings = get_settings()
    setup_logging("orchestrator", settings.log_level, settings.log_json)
    trace.start_tracing("orchestrator")  # before the first channel or server: they trace only if it is on
    store = await open_job_store(settings)
    where = describe(settings)
    pool = ReplicaPool({stage: settings.replicas(stage) for stage in ("imaging", "diffusion")},
                       refresh_s=settings.dns_refresh_s)
    scheduler = Scheduler(settings, store, pool)
    try:
        # before listening: a store that cannot be recovered must not take submits it would never run
        await scheduler.recover()
    except Exception as exc:
        log.exception("recovery failed; the orchestrator stops")
        await store.close()
        if store.shared:
            raise RecoveryError(f"re-queueing the jobs in {where} failed ({type(exc).__name__}: {exc})") from exc
        raise RecoveryError(f"re-queueing the jobs in {where} failed ({type(exc).__name__}: "
                            f"{exc}). Check the file (sqlite3 {where} 'PRAGMA integrity_check'); "
                            "restore a backup, or move it aside to start with an empty job store.") from exc
    servicer = OrchestratorServicer(scheduler)
    server, port = await start_server(
        listen, [lambda s: orchestrator_pb2_grpc.add_OrchestratorServicer_to_server(servicer, s)],
        ["comfymesh.v1.Orchestrator"])
    gctune.settle(gctune.parse_thresholds(settings.gc_thresholds))
    print(f"comfymesh orchestrator listening on {listen.rsplit(':', 1)[0]}:{port} "
          f"(jobs in {where})", flush=True)
    metrics = serve_metrics(settings.orchestrator_metrics, scheduler) if settings.orchestrator_metrics else None
    if metrics is not None:
        print(f"comfymesh orchestrator metrics on http://{settings.orchestrator_metrics}/metrics", flush=True)
    queue = asyncio.create_task(scheduler.run_forever())
    described = asyncio.create_task(scheduler.node_catalog.describe_all())  # the stages' node declarations
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    queue.cancel()
    described.cancel()
    if store.shared:  # the other orchestrators take the running jobs over at once, not after the lease TTL
        await scheduler.hand_back()
    await server.stop(grace=2)
    if metrics is not None:
        metrics[0].shutdown()
    await store.close()


def main() -> None:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="python -m comfymesh.orchestrator", description=__doc__)
    parser.add_argument("--listen", default=settings.orchestrator,
                        help="host:port to serve gRPC on (default: COMFYMESH_ORCHESTRATOR, %(default)s)")
    args = parser.parse_args()
    try:
        server_credentials(args.listen)  # refused before the store opens
        asyncio.run(serve(args.listen))
    except (ServerConfigError, DamagedDatabaseError, RecoveryError, DatabaseUnreachableError, SchemaTooNewError,
            UnknownDatabaseSchemeError) as exc:
        sys.exit(f"comfymesh orchestrator: {exc}")


if __name__ == "__main__":
    main()
