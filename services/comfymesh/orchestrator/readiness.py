"""Which configured stages have a healthy replica: each replica's gRPC health check, asked when readiness is.

A stage serves node types only when it is configured with replicas (the node catalog is what they declare),
so every configured stage must have one replica answering SERVING for the mesh to be ready.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2

from comfymesh.orchestrator.replicas import Replica, ReplicaPool

# a readiness probe must answer within its own timeout (Kubernetes: 1 s by default, ours 3 s)
CHECK_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class StageHealth:
    stage: str
    replicas: int
    healthy: int


async def is_serving(replica: Replica) -> bool:
    """Whether the replica's gRPC health check answers SERVING within the probe timeout."""
    try:
        reply = await replica.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=CHECK_TIMEOUT_S)
    except grpc.aio.AioRpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def stage_health(pool: ReplicaPool) -> list[StageHealth]:
    """Every configured stage with its count of replicas answering SERVING (all asked at once)."""
    stages = [(stage, list(pool.replicas[stage])) for stage in pool.configured()]
    answers = await asyncio.gather(*(is_serving(r) for _, replicas in stages for r in replicas))
    health, start = [], 0
    for stage, replicas in stages:
        health.append(StageHealth(stage, len(replicas), sum(answers[start:start + len(replicas)])))
        start += len(replicas)
    return health
