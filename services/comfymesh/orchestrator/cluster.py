"""The operators' view of one orchestrator: its stage replicas (health, slots in use, loaded models, device
memory) and the progress of the jobs it drives. Every replica is asked at once, each within the probe timeout,
so a replica that is down costs the view one timeout, not one per replica."""

from __future__ import annotations

import asyncio
import os
import socket

from comfymesh.orchestrator.devices import runner_models
from comfymesh.orchestrator.readiness import is_serving
from comfymesh.orchestrator.replicas import Replica
from comfymesh.orchestrator.runner import JobRunner
from comfymesh.orchestrator.scheduler import Scheduler
from comfymesh.v1 import model_runner_pb2, orchestrator_pb2

NAME = f"{socket.gethostname()}:{os.getpid()}"


def _replica_view(replica: Replica, healthy: bool,
                  runner: model_runner_pb2.ListModelsResponse | None) -> orchestrator_pb2.ReplicaView:
    view = orchestrator_pb2.ReplicaView(stage=replica.stage, address=replica.address, healthy=healthy,
                                        slots=replica.slots, in_flight=replica.in_flight, device=replica.device,
                                        failures=replica.failures)
    if runner is None:
        view.models.extend(sorted(replica.models))
        return view
    # a model-running replica says what its cache holds now, which Describe's answer may predate
    view.models.extend(sorted(m.name for m in runner.models if m.loaded))
    view.device = runner.device or replica.device
    view.device_total_bytes, view.device_free_bytes = runner.device_total_bytes, runner.device_free_bytes
    view.memory_budget_bytes, view.memory_used_bytes = runner.memory_budget_bytes, runner.memory_used_bytes
    return view


def _running_view(job_id: str, runner: JobRunner) -> orchestrator_pb2.RunningJobView:
    recorder = runner.recorder
    node_id, value, maximum = recorder.progress
    if node_id not in recorder.running_nodes:  # a finished node's: the running one has reported none yet
        node_id, value, maximum = next(iter(sorted(recorder.running_nodes)), ""), 0, 0
    plan = recorder.plan
    class_type = plan.nodes[node_id].class_type if plan is not None and node_id in plan.nodes else ""
    return orchestrator_pb2.RunningJobView(
        job_id=job_id, node_id=node_id, class_type=class_type, value=value, max=maximum,
        nodes_done=len(recorder.finished & recorder.to_run), nodes_total=len(recorder.to_run))


async def cluster_view(scheduler: Scheduler) -> orchestrator_pb2.GetClusterResponse:
    pool = scheduler.pool
    replicas = [r for r in pool.all() if not r.retired]
    health, runners = await asyncio.gather(asyncio.gather(*(is_serving(r) for r in replicas)),
                                           asyncio.gather(*(runner_models(r) for r in replicas)))
    return orchestrator_pb2.GetClusterResponse(
        orchestrator=NAME, max_running_jobs=scheduler.settings.max_running_jobs,
        replicas=[_replica_view(r, h, m) for r, h, m in zip(replicas, health, runners, strict=True)],
        running=[_running_view(job_id, runner) for job_id, runner in list(scheduler.runners.items())],
        waiting_calls=sum(pool.waiting.values()))
