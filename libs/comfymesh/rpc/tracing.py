"""Traces across gRPC: a client span per call with its `traceparent` in the metadata, and a server span per
call, child of the `traceparent` it came with. Installed by `open_channel` and `start_server` only while
tracing is on (comfymesh.trace), so that a process that does not trace pays nothing per call."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

from comfymesh import trace

_HEALTH_PREFIX = "/grpc.health.v1.Health/"  # probes every second or so: not worth a span each
_ending: set[asyncio.Task[None]] = set()  # the tasks that end client spans, kept alive until they have


def _attributes(method: str) -> dict[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


async def _end_when_done(call: Any, span: Any) -> None:
    try:
        code = await call.code()
    except asyncio.CancelledError:
        code = grpc.StatusCode.CANCELLED
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code != grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()


class _ClientSpan:
    async def _call(self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails,
                    request: Any) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else str(details.method)
        if method.startswith(_HEALTH_PREFIX):
            return await continuation(details, request)
        span = trace.start_span(method.lstrip("/"), SpanKind.CLIENT, _attributes(method))
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        for key, value in trace.inject(set_span_in_context(span)).items():
            metadata.add(key, value)
        try:
            call = await continuation(grpc.aio.ClientCallDetails(
                details.method, details.timeout, metadata, details.credentials, details.wait_for_ready), request)
        except BaseException:
            span.set_status(Status(StatusCode.ERROR))
            span.end()
            raise
        ending = asyncio.ensure_future(_end_when_done(call, span))
        _ending.add(ending)
        ending.add_done_callback(_ending.discard)
        return call


class _UnaryUnary(_ClientSpan, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Callable[..., Any], client_call_details: Any,
                                    request: Any) -> Any:
        return await self._call(continuation, client_call_details, request)


class _UnaryStream(_ClientSpan, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Callable[..., Any], client_call_details: Any,
                                     request: Any) -> Any:
        return await self._call(continuation, client_call_details, request)


class _StreamUnary(_ClientSpan, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Callable[..., Any], client_call_details: Any,
                                     request_iterator: Any) -> Any:
        return await self._call(continuation, client_call_details, request_iterator)


class _StreamStream(_ClientSpan, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Callable[..., Any], client_call_details: Any,
                                      request_iterator: Any) -> Any:
        return await self._call(continuation, client_call_details, request_iterator)


def tracing_client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """One interceptor per call kind (a channel files each under the first kind it matches)."""
    return [kind() for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]


def _traced(behavior: Callable[..., Any], method: str, metadata: Any) -> Callable[..., Any]:
    """`behavior` (a servicer method) inside a server span whose parent is the caller's `traceparent`."""
    name, attributes = method.lstrip("/"), _attributes(method)

    def opened() -> Any:
        return trace.span(name, attributes, parent=trace.extract(metadata or ()), kind=SpanKind.SERVER)

    if not inspect.iscoroutinefunction(behavior) and not inspect.isasyncgenfunction(behavior):
        return behavior  # a synchronous servicer method: none of ours, left as it is
    if inspect.isasyncgenfunction(behavior):
        async def streamed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            with opened():
                async for reply in behavior(request, context):
                    yield reply
        return streamed

    async def answered(request: Any, context: grpc.aio.ServicerContext) -> Any:
        with opened():
            return await behavior(request, context)
    return answered


class TracingServerInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler but health's in a server span."""

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
            handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method or ""  # type: ignore[attr-defined]
        if handler is None or method.startswith(_HEALTH_PREFIX):
            return handler
        metadata = handler_call_details.invocation_metadata  # type: ignore[attr-defined]
        options = {"request_deserializer": handler.request_deserializer,
                   "response_serializer": handler.response_serializer}
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(_traced(handler.unary_unary, method, metadata), **options)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(_traced(handler.unary_stream, method, metadata), **options)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(_traced(handler.stream_unary, method, metadata), **options)
        return grpc.stream_stream_rpc_method_handler(_traced(handler.stream_stream, method, metadata), **options)


__all__ = ["TracingServerInterceptor", "tracing_client_interceptors"]
