"""Start a grpc.aio server with the standard health service and the shared message-size bound."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from comfymesh.rpc.channels import channel_options

Registrar = Callable[[grpc.aio.Server], None]


async def start_server(listen: str, registrars: list[Registrar], service_names: list[str]) -> tuple[
        grpc.aio.Server, int]:
    """Bind, register servicers plus health, start; returns the server and its bound port."""
    server = grpc.aio.server(options=channel_options())
    for register in registrars:
        register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}: the address is in use or not local")
    await server.start()
    for name in ["", *service_names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port
