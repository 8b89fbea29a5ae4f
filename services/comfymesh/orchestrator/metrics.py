"""The orchestrator's Prometheus metrics, served on COMFYMESH_ORCHESTRATOR_METRICS.

Per process: stage calls waiting for a free slot and running (a KEDA ScaledObject sums them over every
orchestrator and divides by a replica's slots), jobs this process drives, and counters of what it recorded.
Store-wide: queued jobs per stage they need (every orchestrator reports the same number: take the max).
prometheus_client serves from its own thread; each scrape reads the scheduler's state on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from comfymesh.contracts.events import TERMINAL_EVENTS, EventType
from comfymesh.orchestrator.scheduler import Scheduler

log = logging.getLogger("comfymesh.orchestrator")
SCRAPE_TIMEOUT_S = 5.0


@dataclass
class Snapshot:
    waiting: dict[str, int] = field(default_factory=dict)
    running: dict[str, int] = field(default_factory=dict)
    slots: dict[str, int] = field(default_factory=dict)
    queued: dict[str, int] | None = None  # None: the store did not answer
    jobs_running: int = 0
    recorded: dict[str, int] = field(default_factory=dict)
    calls: dict[tuple[str, str], int] = field(default_factory=dict)


async def snapshot(scheduler: Scheduler) -> Snapshot:
    """The numbers of one scrape, read on the event loop that changes them."""
    pool = scheduler.pool
    stages = pool.configured()
    shot = Snapshot(waiting={s: pool.waiting.get(s, 0) for s in stages},
                    running={s: sum(r.in_flight for r in pool.replicas[s]) for s in stages},
                    slots={s: sum(r.slots for r in pool.replicas[s]) for s in stages},
                    jobs_running=len(scheduler.running), recorded=dict(scheduler.bus.recorded),
                    calls=dict(pool.finished))
    try:
        classes = await scheduler.store.queued_node_classes()
    except Exception as exc:  # a scrape must still answer while the database is away
        log.warning("queued jobs per stage could not be read: %s", exc)
        return shot
    shot.queued = dict.fromkeys(stages, 0)
    for class_types in classes.values():
        for stage in {node.stage for c in class_types if (node := scheduler.catalog.get(c)) is not None}:
            if stage in shot.queued:
                shot.queued[stage] += 1
    return shot


class OrchestratorCollector(Collector):
    def __init__(self, scheduler: Scheduler, loop: asyncio.AbstractEventLoop) -> None:
        self.scheduler = scheduler
        self.loop = loop

    def collect(self) -> Iterable[Metric]:
        shot = asyncio.run_coroutine_threadsafe(snapshot(self.scheduler), self.loop).result(SCRAPE_TIMEOUT_S)
        yield _per_stage("comfymesh_stage_calls_waiting", "Stage calls of this orchestrator waiting for a free "
                         "replica slot", shot.waiting)
        yield _per_stage("comfymesh_stage_calls_running", "Stage calls of this orchestrator running on a replica",
                         shot.running)
        yield _per_stage("comfymesh_stage_slots", "Calls the stage's configured replicas run at once (as they "
                         "last described themselves; 1 until then)", shot.slots)
        if shot.queued is not None:
            yield _per_stage("comfymesh_jobs_queued", "Jobs not started yet in the store (every orchestrator's, "
                             "those whose first call waits for a slot too) with a node on the stage", shot.queued)
        yield GaugeMetricFamily("comfymesh_jobs_running", "Jobs this orchestrator drives", value=shot.jobs_running)
        submitted = CounterMetricFamily("comfymesh_jobs_submitted", "Jobs this orchestrator accepted")
        submitted.add_metric([], shot.recorded.get(EventType.QUEUED, 0))
        yield submitted
        finished = CounterMetricFamily("comfymesh_jobs_finished", "Jobs this orchestrator finished, by final status",
                                       labels=["status"])
        for status in sorted(TERMINAL_EVENTS):
            finished.add_metric([status], shot.recorded.get(status, 0))
        yield finished
        requeued = CounterMetricFamily("comfymesh_jobs_requeued", "Running jobs this orchestrator put back in the "
                                       "queue (restart, lost lease, hand-back)")
        requeued.add_metric([], shot.recorded.get(EventType.REQUEUED, 0))
        yield requeued
        calls = CounterMetricFamily("comfymesh_stage_calls", "Stage calls this orchestrator finished, by outcome "
                                    "(error: the replica failed or was lost, and the call was retried or failed)",
                                    labels=["stage", "outcome"])
        for (stage, outcome), count in sorted(shot.calls.items()):
            calls.add_metric([stage, outcome], count)
        yield calls


def _per_stage(name: str, documentation: str, values: dict[str, int]) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, documentation, labels=["stage"])
    for stage, value in sorted(values.items()):
        gauge.add_metric([stage], value)
    return gauge


def serve_metrics(listen: str, scheduler: Scheduler) -> tuple[WSGIServer, Thread]:
    """Serve /metrics on `listen` (host:port) from a thread; call `.shutdown()` on the server to stop."""
    host, port = listen.rsplit(":", 1)
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    registry.register(OrchestratorCollector(scheduler, asyncio.get_running_loop()))
    return start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0", registry=registry)
