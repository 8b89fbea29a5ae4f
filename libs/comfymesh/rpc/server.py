"""Start a grpc.aio server with the standard health service and the shared message-size bound."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from comfymesh.config import get_settings
from comfymesh.rpc.auth import InternalSecretServerInterceptor
from comfymesh.rpc.channels import channel_options

Registrar = Callable[[grpc.aio.Server], None]


async def start_server(listen: str, registrars: list[Registrar], service_names: list[str],
                       internal_secret: str | None = None) -> tuple[grpc.aio.Server, int]:
    """Bind, register servicers plus health, start; returns the server and its bound port.

    With an internal secret (default: COMFYMESH_INTERNAL_SECRET) every call but health must carry it.
    """
    secret = get_settings().internal_secret.get_secret_value() if internal_secret is None else internal_secret
    interceptors = [InternalSecretServerInterceptor(secret)] if secret else None
    # accept the clients' keepalive pings on long, quiet streams (a waiting job's events) instead of
    # answering them with GOAWAY "too many pings", which would cut those streams
    options = [*channel_options(), ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
               ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_ping_strikes", 0)]
    server = grpc.aio.server(options=options, interceptors=interceptors)
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
