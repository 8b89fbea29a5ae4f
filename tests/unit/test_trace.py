"""comfymesh.trace: hop marks on stderr, W3C traceparent parsing, and a disabled tracer that costs nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comfymesh import trace
from comfymesh.config import Settings


def test_marks_are_json_lines_with_wall_clock_times(configure: Callable[..., Settings],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    configure(trace="1")
    before = time.time()
    trace.mark("stage.node.KSampler")
    trace.mark("gateway.view")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["trace"] for line in lines] == ["stage.node.KSampler", "gateway.view"]
    assert before <= lines[0]["t"] <= lines[1]["t"] <= time.time()


def test_off_by_default_writes_nothing(monkeypatch: pytest.MonkeyPatch, configure: Callable[..., Settings],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("COMFYMESH_TRACE", raising=False)
    configure()
    trace.mark("gateway.view")
    assert capsys.readouterr().err == ""


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"


def _remote(context: object) -> tuple[str, str, bool]:
    from opentelemetry.trace import get_current_span

    span_context = get_current_span(context).get_span_context()  # type: ignore[arg-type]
    return f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}", span_context.is_valid


def test_a_w3c_traceparent_names_the_remote_parent_in_headers_or_metadata() -> None:
    header = f"00-{TRACE_ID}-{SPAN_ID}-01"
    assert _remote(trace.extract({"traceparent": header})) == (TRACE_ID, SPAN_ID, True)
    # gRPC metadata: a sequence of pairs, binary values beside text ones, any key case
    metadata: list[tuple[str, str | bytes]] = [("comfymesh-internal-secret", "x"), ("blob-bin", b"\x00\xff"),
                                               ("TraceParent", header)]
    assert _remote(trace.extract(metadata)) == (TRACE_ID, SPAN_ID, True)
    # and back: a context's traceparent is the same header
    assert trace.inject(trace.extract({"traceparent": header})) == {"traceparent": header}


@pytest.mark.parametrize("header", [
    "", "garbage", f"00-{TRACE_ID}-{SPAN_ID}", f"00-{'0' * 32}-{SPAN_ID}-01", f"00-{TRACE_ID}-{'0' * 16}-01",
    f"ff-{TRACE_ID}-{SPAN_ID}-01", f"00-{TRACE_ID.upper()}-{SPAN_ID}-01", f"00-{TRACE_ID}-{SPAN_ID}-zz",
    f"00-{TRACE_ID}-{SPAN_ID}-01-extra", "00-" + "x" * 10_000, "\x00\n\r",
])
def test_a_malformed_traceparent_is_ignored(header: str) -> None:
    assert _remote(trace.extract({"traceparent": header}))[2] is False
    assert _remote(trace.extract([("traceparent", header.encode(errors="replace"))]))[2] is False


@given(st.lists(st.tuples(st.text(max_size=20), st.one_of(st.text(max_size=80), st.binary(max_size=80))),
                max_size=6))
def test_extract_never_raises(pairs: list[tuple[str, str | bytes]]) -> None:
    headers: list[tuple[str, str | bytes]] = [*pairs, *(("traceparent", value) for _, value in pairs)]
    trace.extract(headers)


def test_off_a_span_is_one_shared_no_op_and_nothing_is_stored(configure: Callable[..., Settings]) -> None:
    configure(otlp_endpoint="")
    assert not trace.start_tracing("gateway") and not trace.enabled()
    assert trace.span("validate") is trace.span("plan", {"job.id": "x"})
    with trace.span("validate"), trace.child_span("store.add_job"):
        pass
    assert trace.current_traceparent() == ""
    assert trace.stored_parent({trace.STORED_TRACEPARENT: f"00-{TRACE_ID}-{SPAN_ID}-01"}) is None

    @trace.traced("artifact.put")
    def put(value: int) -> int:
        return value + 1

    assert put(1) == 2


def test_untraced_services_load_no_sdk_and_create_no_exporter(tmp_path: Path) -> None:
    """Without an endpoint the services' modules, started as they start, load neither the SDK nor an exporter
    (in a fresh interpreter: this one may have loaded them for another test)."""
    code = ("import sys\nfrom comfymesh import trace\nfrom comfymesh.config import get_settings\n"
            "from comfymesh.gateway.app import create_app\nimport comfymesh.orchestrator.__main__\n"
            "import comfymesh.stage.server\nimport comfymesh.rpc.channels as channels\n"
            "assert not trace.start_tracing('gateway') and not trace.enabled()\n"
            "create_app(get_settings())\n"
            "loaded = [m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter'))]\n"
            "assert not loaded, loaded\nprint('untraced')\n")
    env = {"PATH": os.environ.get("PATH", ""), "COMFYMESH_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "untraced", result.stderr


def test_the_collector_comes_from_either_variable_and_must_be_a_url(configure: Callable[..., Settings],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    assert configure().otlp_endpoint == "http://collector:4317"
    assert configure(otlp_endpoint="https://traces.example:443").otlp_endpoint == "https://traces.example:443"
    with pytest.raises(SystemExit) as refused:
        configure(otlp_endpoint="collector:4317")
    assert str(refused.value).splitlines()[1].strip() == (
        "COMFYMESH_OTLP_ENDPOINT: must be the http:// (plaintext) or https:// URL of an OTLP/gRPC collector, "
        "e.g. http://collector:4317 (read from OTEL_EXPORTER_OTLP_ENDPOINT when unset)")
