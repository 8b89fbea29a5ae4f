"""Start a grpc.aio server with the standard health service and the shared message-size bound.

A server refuses to listen beyond loopback without the internal secret (anyone who reaches it could run
jobs and read the store), and serves TLS when given a certificate and key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from comfymesh import trace
from comfymesh.addresses import listens_locally
from comfymesh.config import MAKE_SECRET, Settings, get_settings
from comfymesh.rpc.auth import InternalSecretServerInterceptor
from comfymesh.rpc.channels import channel_options, read_pem
from comfymesh.rpc.tracing import TracingServerInterceptor

Registrar = Callable[[grpc.aio.Server], None]
log = logging.getLogger("comfymesh.rpc")


class ServerConfigError(Exception):
    """The server's settings would leave it open or unable to serve; the message says what to set."""


def server_credentials(listen: str, settings: Settings | None = None,
                       internal_secret: str | None = None) -> grpc.ServerCredentials | None:
    """TLS credentials for a server on `listen` (None: plaintext), after checking that it may listen there.

    Raises ServerConfigError; services call it first thing, so a refusal comes before a slow start-up."""
    settings = settings or get_settings()
    secret = settings.internal_secret.get_secret_value() if internal_secret is None else internal_secret
    local = listens_locally(listen)
    if not local and not secret:
        raise ServerConfigError(
            f"refusing to listen on {listen}: other machines could call this service and no internal secret is "
            f"set. Set COMFYMESH_INTERNAL_SECRET to the same long random string on every service (e.g. the "
            f"output of {MAKE_SECRET}), or listen on 127.0.0.1 (--listen).")
    if bool(settings.grpc_tls_cert) != bool(settings.grpc_tls_key):
        raise ServerConfigError("COMFYMESH_GRPC_TLS_CERT and COMFYMESH_GRPC_TLS_KEY go together: set both "
                                "(a PEM certificate chain and its private key) or neither")
    if not settings.grpc_tls_cert:
        if not local:
            log.warning("gRPC on %s is plaintext: set COMFYMESH_GRPC_TLS_CERT and COMFYMESH_GRPC_TLS_KEY "
                        "(and COMFYMESH_GRPC_TLS_CA on the clients) unless the network is private", listen)
        return None
    try:
        chain = read_pem("COMFYMESH_GRPC_TLS_CERT", settings.grpc_tls_cert)
        key = read_pem("COMFYMESH_GRPC_TLS_KEY", settings.grpc_tls_key)
    except ValueError as exc:
        raise ServerConfigError(str(exc)) from None
    return grpc.ssl_server_credentials([(key, chain)])


async def start_server(listen: str, registrars: list[Registrar], service_names: list[str],
                       internal_secret: str | None = None,
                       health_servicer: health.aio.HealthServicer | None = None) -> tuple[grpc.aio.Server, int]:
    """Bind, register servicers plus health, start; returns the server and its bound port. Pass
    `health_servicer` to change the health later (a draining stage answers NOT_SERVING).

    With an internal secret (default: COMFYMESH_INTERNAL_SECRET) every call but health must carry it.
    Raises ServerConfigError (see `server_credentials`) or OSError when the address cannot be bound.
    """
    secret = get_settings().internal_secret.get_secret_value() if internal_secret is None else internal_secret
    credentials = server_credentials(listen, internal_secret=secret)
    interceptors: list[grpc.aio.ServerInterceptor] = [InternalSecretServerInterceptor(secret)] if secret else []
    if trace.enabled():  # inside the secret check: a refused call gets no span
        interceptors.append(TracingServerInterceptor())
    # accept the clients' keepalive pings on long, quiet streams (a waiting job's events) instead of
    # answering them with GOAWAY "too many pings", which would cut those streams
    options = [*channel_options(), ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
               ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_ping_strikes", 0)]
    server = grpc.aio.server(options=options, interceptors=interceptors or None)
    for register in registrars:
        register(server)
    health_servicer = health_servicer or health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_secure_port(listen, credentials) if credentials else server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}: the address is in use or not local")
    await server.start()
    for name in ["", *service_names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port


__all__ = ["Registrar", "ServerConfigError", "server_credentials", "start_server"]
