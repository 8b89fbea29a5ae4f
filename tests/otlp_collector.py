"""An OTLP/gRPC trace collector for tests: opentelemetry-proto's TraceService on a loopback port, keeping every
span it is sent with its resource's attributes.

The server runs in its own process (`python -m tests.otlp_collector`, one JSON line per span on stdout): the
mesh's services are forked from the test process, and a fork while gRPC's threads run there can hang the
child before it executes the service."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class CollectedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_id: str  # empty: a root
    kind: int  # opentelemetry.proto.trace.v1.Span.SpanKind
    attributes: dict[str, Any]
    resource: dict[str, Any]  # service.name, host.name, service.instance.id, ...


class OtlpCollector:
    """The spans received so far (`spans`); `wait_for` blocks until a condition on them holds."""

    def __init__(self, port: int) -> None:
        self.endpoint = f"http://127.0.0.1:{port}"
        self.spans: list[CollectedSpan] = []
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

    def _read(self, lines: IO[str]) -> None:
        for line in lines:
            with self.changed:
                self.spans.append(CollectedSpan(**json.loads(line)))
                self.changed.notify_all()


@contextmanager
def otlp_collector() -> Iterator[OtlpCollector]:
    process = subprocess.Popen([sys.executable, "-m", "tests.otlp_collector"], cwd=REPO, stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout is not None
    try:
        ready = process.stdout.readline().split()  # "listening <port>", once the server is up
        assert ready[:1] == ["listening"], f"the collector did not start (exit status {process.poll()})"
        collector = OtlpCollector(int(ready[1]))
        threading.Thread(target=collector._read, args=(process.stdout,), daemon=True).start()
        yield collector
    finally:
        process.terminate()
        process.wait(timeout=10)


def _serve() -> None:
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue

    def value(any_value: AnyValue) -> Any:
        kind = any_value.WhichOneof("value")
        return getattr(any_value, kind) if kind else None

    def attributes(pairs: Any) -> dict[str, Any]:
        return {pair.key: value(pair.value) for pair in pairs}

    written = threading.Lock()

    class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
                   context: grpc.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
            spans = [CollectedSpan(span.name, span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex(),
                                   span.kind, attributes(span.attributes), attributes(batch.resource.attributes))
                     for batch in request.resource_spans for scope in batch.scope_spans for span in scope.spans]
            with written:
                sys.stdout.write("".join(json.dumps(asdict(span)) + "\n" for span in spans))
                sys.stdout.flush()
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    port = server.add_insecure_port("127.0.0.1:0")
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
    server.start()
    print(f"listening {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    _serve()
