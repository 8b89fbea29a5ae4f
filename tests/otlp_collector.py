"""An OTLP/gRPC trace collector for tests: opentelemetry-proto's TraceService on a loopback port, keeping every
span it is sent with its resource's attributes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def _attributes(pairs: Iterator[KeyValue] | Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


@dataclass(frozen=True)
class CollectedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_id: str  # empty: a root
    kind: int  # opentelemetry.proto.trace.v1.Span.SpanKind
    attributes: dict[str, Any]
    resource: dict[str, Any]  # service.name, host.name, service.instance.id, ...


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, collector: OtlpCollector) -> None:
        self.collector = collector

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
               context: grpc.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        spans = [CollectedSpan(span.name, span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex(),
                               span.kind, _attributes(span.attributes), _attributes(batch.resource.attributes))
                 for batch in request.resource_spans for scope in batch.scope_spans for span in scope.spans]
        with self.collector.changed:
            self.collector.spans.extend(spans)
            self.collector.requests += 1
            self.collector.changed.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpCollector:
    """The spans received so far (`spans`); `wait_for` blocks until a condition on them holds."""

    def __init__(self, port: int) -> None:
        self.endpoint = f"http://127.0.0.1:{port}"
        self.spans: list[CollectedSpan] = []
        self.requests = 0
        self.changed = threading.Condition()

    def wait_for(self, condition: Callable[[list[CollectedSpan]], bool], timeout: float = 30.0) -> list[CollectedSpan]:
        """The spans once `condition(spans)` holds; AssertionError naming what came when it never does."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not condition(self.spans):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("spans never met the condition; received: " + ", ".join(
                        f"{s.resource.get('service.name')}:{s.name}" for s in self.spans))
                self.changed.wait(left)
            return list(self.spans)


@contextmanager
def otlp_collector() -> Iterator[OtlpCollector]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    port = server.add_insecure_port("127.0.0.1:0")
    collector = OtlpCollector(port)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(collector), server)
    server.start()
    try:
        yield collector
    finally:
        server.stop(grace=None)
