"""Service-to-service authentication: every gRPC call carries the shared internal secret as metadata.

A client interceptor adds it on every channel from `open_channel`; a server interceptor in
`start_server` rejects calls without it (UNAUTHENTICATED), except the standard health service, which
load balancers and `comfymesh up` probe without credentials.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

METADATA_KEY = "comfymesh-internal-secret"
_OPEN_PREFIX = "/grpc.health.v1.Health/"


class _AddsSecret:
    def __init__(self, secret: str) -> None:
        self._secret = secret

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add(METADATA_KEY, self._secret)
        return grpc.aio.ClientCallDetails(details.method, details.timeout, metadata, details.credentials,
                                          details.wait_for_ready)


class _UnaryUnary(_AddsSecret, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Callable[..., Any], client_call_details: Any,
                                    request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


class _UnaryStream(_AddsSecret, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Callable[..., Any], client_call_details: Any,
                                     request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


class _StreamUnary(_AddsSecret, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Callable[..., Any], client_call_details: Any,
                                     request_iterator: Any) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


class _StreamStream(_AddsSecret, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Callable[..., Any], client_call_details: Any,
                                      request_iterator: Any) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


def client_interceptors(secret: str) -> list[grpc.aio.ClientInterceptor]:
    """One interceptor per call kind: a channel files each interceptor under the first kind it matches."""
    return [kind(secret) for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]


async def _refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                        "missing or wrong internal secret: every comfymesh service needs the same "
                        "COMFYMESH_INTERNAL_SECRET")


def _refusing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` whose every call is refused before the servicer runs."""
    options = {"request_deserializer": handler.request_deserializer,
               "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(_refuse, **options)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(_refuse, **options)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(_refuse, **options)
    return grpc.stream_stream_rpc_method_handler(_refuse, **options)


class InternalSecretServerInterceptor(grpc.aio.ServerInterceptor):
    """Lets a call through only with the internal secret in its metadata (compared in constant time)."""

    def __init__(self, secret: str) -> None:
        self._secret = secret.encode()

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
            handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method or ""  # type: ignore[attr-defined]
        if handler is None or method.startswith(_OPEN_PREFIX):
            return handler
        sent = dict(handler_call_details.invocation_metadata or ()).get(METADATA_KEY, "")  # type: ignore[attr-defined]
        if isinstance(sent, str) and hmac.compare_digest(sent.encode(), self._secret):
            return handler
        return _refusing(handler)


__all__ = ["METADATA_KEY", "InternalSecretServerInterceptor", "client_interceptors"]
