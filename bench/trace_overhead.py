"""What a span costs: the disabled path every service takes by default, and a recording span when exporting.

`.venv/bin/python bench/trace_overhead.py` prints nanoseconds per call, best of 7 repeats, for an empty
function call (the floor), `with trace.span(...)`, `with trace.child_span(...)`, a `@trace.traced` call and
`trace.mark`: with tracing off, then on, outside any trace and inside one (spans batched for an OTLP
endpoint nothing listens on: the exporter's sends fail off the measured path and the spans are dropped).
"""

from __future__ import annotations

import os
import socket
import sys
import timeit
from collections.abc import Callable

from comfymesh import trace
from comfymesh.config import get_settings

CALLS = 200_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nanoseconds(body: Callable[[], object], calls: int = CALLS) -> float:
    return min(timeit.repeat(body, number=calls, repeat=7)) / calls * 1e9


def cases() -> dict[str, Callable[[], object]]:
    def nothing() -> None:
        pass

    @trace.traced("artifact.put")
    def decorated() -> None:
        pass

    def span() -> None:
        with trace.span("validate"):
            pass

    def child() -> None:
        with trace.child_span("store.write"):
            pass

    return {"empty call (floor)": nothing, "with trace.span()": span, "with trace.child_span()": child,
            "@trace.traced call": decorated, "trace.mark()": lambda: trace.mark("bench.point")}


def main() -> None:
    os.environ.pop("COMFYMESH_TRACE", None)
    os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    os.environ["COMFYMESH_OTLP_ENDPOINT"] = ""
    get_settings.cache_clear()
    assert not trace.start_tracing("bench")
    off = {name: nanoseconds(body) for name, body in cases().items()}
    assert not any(name.startswith("opentelemetry.sdk") for name in sys.modules), "tracing off loaded the SDK"
    os.environ["COMFYMESH_OTLP_ENDPOINT"] = f"http://127.0.0.1:{_free_port()}"
    get_settings.cache_clear()
    assert trace.start_tracing("bench")
    outside = {name: nanoseconds(body, CALLS // 20) for name, body in cases().items()}
    with trace.span("job"):  # child_span and traced record only inside a trace
        inside = {name: nanoseconds(body, CALLS // 20) for name, body in cases().items()}
    print("| call | off, ns | on, outside a trace, ns | on, inside a trace, ns |\n|---|---|---|---|")
    for name in off:
        print(f"| {name} | {off[name]:.0f} | {outside[name]:.0f} | {inside[name]:.0f} |")

if __name__ == "__main__":
    main()
