"""The OpenTelemetry SDK side of comfymesh.trace: a tracer provider that batches spans to an OTLP/gRPC
collector. Imported only by a process that exports (COMFYMESH_OTLP_ENDPOINT set)."""

from __future__ import annotations

import os
import socket
import uuid

from opentelemetry import trace as otel_trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Tracer

NAMESPACE = "comfymesh"


def resource(service: str, host_name: str = "") -> Resource:
    """Who made the spans: the service, its host and this process (several replicas share a host name)."""
    host = host_name or socket.gethostname()
    return Resource.create({"service.namespace": NAMESPACE, "service.name": service, "host.name": host,
                            "service.instance.id": f"{host}/{os.getpid()}/{uuid.uuid4().hex[:8]}",
                            "process.pid": os.getpid()})


def install(service: str, endpoint: str, host_name: str = "") -> Tracer:
    """Make this process's tracer provider export to `endpoint` (http:// is plaintext, https:// TLS)."""
    # the provider sends what is still batched when the process exits (its own atexit hook)
    provider = TracerProvider(resource=resource(service, host_name))
    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    otel_trace.set_tracer_provider(provider)  # libraries that trace through the API join the same traces
    return provider.get_tracer("comfymesh")

