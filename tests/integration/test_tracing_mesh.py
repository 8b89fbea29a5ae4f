"""OpenTelemetry traces across the mesh: real processes exporting to an OTLP collector on loopback; one job's
spans form one trace, gateway -> orchestrator -> stage, across hosts named apart."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from tests.mesh import Mesh
from tests.otlp_collector import CollectedSpan, OtlpCollector, otlp_collector

INTERNAL, SERVER, CLIENT = 1, 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind
ORCHESTRATOR_SUBMIT, STAGE_CALL = "comfymesh.v1.Orchestrator/ExecuteWorkflow", "comfymesh.v1.Stage/RunStage"
HOSTS = {"gateway": "control-host", "orchestrator": "control-host", "imaging0": "stage-host-a",
         "imaging1": "stage-host-b"}


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, OtlpCollector]]:
    with otlp_collector() as collector:
        mesh = Mesh(tmp_path_factory.mktemp("home"), stages=("imaging",), imaging_replicas=2,
                    # the SDK's own variable: batches go out every 100 ms instead of every 5 s
                    env={"COMFYMESH_OTLP_ENDPOINT": collector.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"})
        for name, host in HOSTS.items():
            mesh.service(name).spec.env["COMFYMESH_TRACE_HOST_NAME"] = host
        try:
            yield mesh.start(), collector
        finally:
            mesh.stop()


def _prompt(color: int) -> dict[str, Any]:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": color}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "traced"}}}


def _one(spans: list[CollectedSpan], **match: object) -> CollectedSpan:
    found = [s for s in spans if all(getattr(s, key) == value for key, value in match.items())]
    assert len(found) == 1, (match, [(s.name, s.resource.get("service.name")) for s in spans])
    return found[0]


def _children(spans: list[CollectedSpan], parent: CollectedSpan, **match: object) -> list[CollectedSpan]:
    return [s for s in spans if s.parent_id == parent.span_id
            and all(getattr(s, key) == value for key, value in match.items())]


def test_one_job_is_one_trace_from_the_gateway_to_the_stage(traced: tuple[Mesh, OtlpCollector]) -> None:
    mesh, collector = traced
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    reply = mesh.http.post("/v1/workflows", json={"prompt": _prompt(7)},
                           headers={"traceparent": f"00-{trace_id}-{caller_span}-01"})
    assert reply.status_code == 202, reply.text
    job_id = reply.json()["job_id"]
    assert mesh.events(f"/v1/jobs/{job_id}/events")[-1]["event"] == "completed"  # a StreamStatus stream, traced
    job = mesh.wait(job_id)
    assert job["status"] == "completed", job

    # each process sends its spans on its own: wait until every hop's have come
    expected = {("gateway", "POST /v1/workflows", SERVER), ("gateway", ORCHESTRATOR_SUBMIT, CLIENT),
                ("orchestrator", ORCHESTRATOR_SUBMIT, SERVER), ("orchestrator", "job", INTERNAL),
                ("orchestrator", STAGE_CALL, CLIENT), ("imaging", STAGE_CALL, SERVER),
                ("imaging", "node SaveImage", INTERNAL)}

    def every_hop(spans: list[CollectedSpan]) -> bool:
        return expected <= {(s.resource["service.name"], s.name, s.kind) for s in spans if s.trace_id == trace_id}

    spans = [s for s in collector.wait_for(every_hop) if s.trace_id == trace_id]

    # the gateway's server span (FastAPI's own, on our tracer provider) continues the caller's traceparent
    request = _one(spans, name="POST /v1/workflows", kind=SERVER)
    assert request.parent_id == caller_span
    assert request.resource["service.name"] == "gateway" and request.resource["host.name"] == "control-host"
    assert request.attributes["http.response.status_code"] == 202
    # gateway -> orchestrator over gRPC metadata
    submit_out = _one(spans, name=ORCHESTRATOR_SUBMIT, kind=CLIENT)
    assert submit_out.resource["service.name"] == "gateway" and _descends(spans, submit_out, request)
    submit_in = _one(_children(spans, submit_out), kind=SERVER)
    assert submit_in.resource["service.name"] == "orchestrator"
    assert submit_in.resource["service.instance.id"] != request.resource["service.instance.id"]
    assert {s.name for s in _children(spans, submit_in)} >= {"validate", "store.add_job"}
    # the job runs after the submit returned, in the submit's trace
    run = _one(spans, name="job")
    assert run.parent_id == submit_in.span_id and run.attributes["job.id"] == job["job_id"]
    assert _children(spans, run, name="plan")
    # orchestrator -> stage, on another host
    call_out = _one(spans, name=STAGE_CALL, kind=CLIENT)
    assert call_out.resource["service.name"] == "orchestrator" and _descends(spans, call_out, run)
    call_in = _one(_children(spans, call_out), kind=SERVER)
    assert call_in.resource["service.name"] == "imaging"
    assert call_in.resource["host.name"] in ("stage-host-a", "stage-host-b")
    assert sorted(s.name for s in _children(spans, call_in)) == ["node EmptyImage", "node ImageInvert",
                                                                 "node SaveImage"]
    # spans opened in streaming handlers close cleanly (no context detached in another task)
    assert not [line for line in mesh.logs if "Traceback" in line or "Failed to detach" in line]


def test_jobs_on_both_stage_hosts_trace_back_to_their_callers(traced: tuple[Mesh, OtlpCollector]) -> None:
    """Two jobs in a row take the two replicas in turn: each trace reaches the stage host that ran it."""
    mesh, collector = traced
    traces = []
    for color in (11, 12):  # new colors: no cache hit
        trace_id = secrets.token_hex(16)
        reply = mesh.http.post("/v1/workflows", json={"prompt": _prompt(color)},
                               headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
        assert mesh.wait(reply.json()["job_id"])["status"] == "completed"
        traces.append(trace_id)

    def stage_hosts(spans: list[CollectedSpan]) -> dict[str, str]:
        by_id = {s.span_id: s for s in spans}
        return {s.trace_id: s.resource["host.name"] for s in spans
                if s.trace_id in traces and s.name == STAGE_CALL and s.kind == SERVER
                and (caller := by_id.get(s.parent_id)) is not None and caller.kind == CLIENT
                and caller.resource["service.name"] == "orchestrator"}

    spans = collector.wait_for(lambda spans: len(stage_hosts(spans)) == 2)
    assert sorted(stage_hosts(spans).values()) == ["stage-host-a", "stage-host-b"]


def _descends(spans: list[CollectedSpan], span: CollectedSpan, ancestor: CollectedSpan) -> bool:
    by_id = {s.span_id: s for s in spans}
    while span.parent_id in by_id:
        span = by_id[span.parent_id]
        if span.span_id == ancestor.span_id:
            return True
    return False


def test_a_bad_traceparent_starts_a_new_trace(traced: tuple[Mesh, OtlpCollector]) -> None:
    mesh, collector = traced
    path = f"/v1/jobs/no-such-job-{secrets.token_hex(4)}"
    reply = mesh.http.get(path, headers={"traceparent": "00-zz-not-a-header-01"})
    assert reply.status_code == 404

    def answered(spans: list[CollectedSpan]) -> list[CollectedSpan]:
        return [s for s in spans if s.kind == SERVER and s.attributes.get("url.path") == path]

    spans = answered(collector.wait_for(lambda spans: bool(answered(spans))))
    assert len(spans) == 1 and spans[0].parent_id == "" and spans[0].name == "GET /v1/jobs/{job_id}"
