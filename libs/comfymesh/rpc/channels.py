"""Client channels with the same message-size bound as the servers (tensors never cross gRPC), over TLS
when COMFYMESH_GRPC_TLS_CA names the CA to verify services against."""

from __future__ import annotations

from pathlib import Path

import grpc

from comfymesh import trace
from comfymesh.config import get_settings
from comfymesh.config.discovery import is_dns_target
from comfymesh.rpc.auth import client_interceptors
from comfymesh.rpc.discovery import BALANCED_SERVICE_CONFIG
from comfymesh.rpc.tracing import tracing_client_interceptors


def max_message_bytes() -> int:
    """Control-plane bound; tests lower it (COMFYMESH_GRPC_MAX_MESSAGE_BYTES) to prove no tensor travels."""
    return get_settings().grpc_max_message_bytes


def channel_options() -> list[tuple[str, int]]:
    limit = max_message_bytes()
    return [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit),
            ("grpc.keepalive_time_ms", 20_000), ("grpc.keepalive_timeout_ms", 10_000),
            # a restarted replica is found within a couple of seconds, not after gRPC's 2-minute backoff cap
            ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2_000)]


def read_pem(setting: str, path: str) -> bytes:
    """The PEM file a TLS setting names; ValueError naming the setting when it is unreadable or not PEM."""
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ValueError(f"{setting} names {path}, which cannot be read ({exc.strerror})") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"{setting} names {path}, which is not a PEM file")
    return data


def open_channel(address: str, internal_secret: str | None = None) -> grpc.aio.Channel:
    """A channel to another service; its calls carry the internal secret (default: COMFYMESH_INTERNAL_SECRET)."""
    settings = get_settings()
    secret = settings.internal_secret.get_secret_value() if internal_secret is None else internal_secret
    interceptors = [*(client_interceptors(secret) if secret else ()),
                    *(tracing_client_interceptors() if trace.enabled() else ())] or None
    options: list[tuple[str, int | str]] = [*channel_options()]
    if is_dns_target(address):  # every address of the name, in turn, leaving out those not SERVING
        options.append(("grpc.service_config", BALANCED_SERVICE_CONFIG))
    if settings.grpc_tls_ca:
        credentials = grpc.ssl_channel_credentials(read_pem("COMFYMESH_GRPC_TLS_CA", settings.grpc_tls_ca))
        return grpc.aio.secure_channel(address, credentials, options=options, interceptors=interceptors)
    return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
