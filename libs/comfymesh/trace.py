"""Tracing of every hop of a job: OpenTelemetry spans, exported by OTLP when COMFYMESH_OTLP_ENDPOINT is set.

`start_tracing(service)` runs once in each service's entry point. Without an endpoint it loads nothing and
`span()` hands back one shared do-nothing context manager: a disabled span costs a global read and a
`with` (bench/trace_overhead.py measures it). With one, the SDK and its OTLP exporter are loaded
(comfymesh.trace_export) and `span()` opens a real span, child of the current one. The W3C `traceparent`
carries the trace between processes: gRPC metadata (comfymesh.rpc.tracing), HTTP headers (read by FastAPI's
native server span, which uses the provider set here) and the job's stored options (a job runs after its
submit returned, maybe on another orchestrator).

`mark(point)` notes that a process reached a point: an event on the current span, and, with
COMFYMESH_TRACE=1, a `{"trace": "<point>", "t": <wall-clock seconds>}` line on stderr, which
`bench/diffusion_gpu.py --trace` lines up per job into the hop-by-hop table of bench/README.md.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar, cast

from comfymesh.config import get_settings

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, SpanKind, Tracer

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# the job's stored options keep the submit's traceparent under this key, so its run joins the submit's trace
STORED_TRACEPARENT = "traceparent"

F = TypeVar("F", bound=Callable[..., Any])
_OFF: AbstractContextManager[None] = contextlib.nullcontext()
_tracer: Tracer | None = None


def start_tracing(service: str) -> bool:
    """Export this process's spans as `service` when an OTLP endpoint is configured; whether it is on."""
    global _tracer
    settings = get_settings()
    if _tracer is not None or not settings.otlp_endpoint:
        return _tracer is not None
    from comfymesh.trace_export import install  # the SDK is imported only by a process that exports

    _tracer = install(service, settings.otlp_endpoint, settings.trace_host_name)
    return True


def enabled() -> bool:
    return _tracer is not None


def span(name: str, attributes: Mapping[str, str | int | float | bool] | None = None,
         parent: Context | None = None, kind: SpanKind | None = None) -> AbstractContextManager[Any]:
    """A span around a block, child of the current span (or of `parent`); a shared no-op when tracing is off."""
    if _tracer is None:
        return _OFF
    if kind is None:
        return _tracer.start_as_current_span(name, context=parent, attributes=attributes)
    return _tracer.start_as_current_span(name, context=parent, kind=kind, attributes=attributes)


def child_span(name: str, attributes: Mapping[str, str | int | float | bool] | None = None) -> AbstractContextManager[Any]:
    """`span`, but only inside a trace: work that no traced request asked for (a retention pass) opens none."""
    if _tracer is None or not _in_trace():
        return _OFF
    return _tracer.start_as_current_span(name, attributes=attributes)


def traced(name: str) -> Callable[[F], F]:
    """Decorate a function (or coroutine function) to run inside a span `name`, child of the current span.
    Off, or outside any trace (a thread that was handed no context), it is called as is."""
    def decorate(function: F) -> F:
        if inspect.iscoroutinefunction(function):
            @functools.wraps(function)
            async def awaited(*args: Any, **kwargs: Any) -> Any:
                if _tracer is None or not _in_trace():
                    return await function(*args, **kwargs)
                with _tracer.start_as_current_span(name):
                    return await function(*args, **kwargs)
            return cast(F, awaited)

        @functools.wraps(function)
        def called(*args: Any, **kwargs: Any) -> Any:
            if _tracer is None or not _in_trace():
                return function(*args, **kwargs)
            with _tracer.start_as_current_span(name):
                return function(*args, **kwargs)
        return cast(F, called)
    return decorate


def _in_trace() -> bool:
    from opentelemetry.trace import get_current_span

    return bool(get_current_span().get_span_context().is_valid)


def start_span(name: str, kind: SpanKind, attributes: Mapping[str, str] | None = None) -> Span:
    """A span the caller ends (one that outlives a block: a gRPC call in flight). Tracing must be on."""
    assert _tracer is not None, "start_span is called only while tracing is on"
    return _tracer.start_span(name, kind=kind, attributes=attributes)


def mark(point: str) -> None:
    """Record that this process reached `point` (a dotted name without quotes) now."""
    if _tracer is not None:
        from opentelemetry.trace import get_current_span

        get_current_span().add_event(point)
    if get_settings().trace:
        sys.stderr.write(f'{{"trace": "{point}", "t": {time.time():.6f}}}\n')


def extract(carrier: Iterable[tuple[str, str | bytes]] | Mapping[str, str]) -> Context:
    """The remote parent that `traceparent`/`tracestate` in headers or metadata name. A missing or malformed
    header gives an empty context (the span becomes a root), never an error."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    pairs = carrier.items() if isinstance(carrier, Mapping) else carrier
    found = {key.lower(): value for key, value in pairs
             if isinstance(key, str) and isinstance(value, str) and key.lower() in (TRACEPARENT, TRACESTATE)}
    return TraceContextTextMapPropagator().extract(found)


def inject(context: Context | None = None) -> dict[str, str]:
    """`traceparent` (and `tracestate`) naming the current span, or the span of `context`; empty when none."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=context)
    return carrier


def current_traceparent() -> str:
    """The current span's `traceparent`, to store with a job; empty when tracing is off or no span is open."""
    return inject().get(TRACEPARENT, "") if _tracer is not None else ""


def stored_parent(stored: object) -> Context | None:
    """The context a job's stored options name (`STORED_TRACEPARENT`); None when tracing is off or none is kept."""
    if _tracer is None or not isinstance(stored, Mapping):
        return None
    value = stored.get(STORED_TRACEPARENT)
    return extract({TRACEPARENT: value}) if isinstance(value, str) else None


__all__ = ["STORED_TRACEPARENT", "TRACEPARENT", "child_span", "current_traceparent", "enabled", "extract", "inject", "mark",
           "span", "start_span", "start_tracing", "stored_parent", "traced"]
