"""Comfy API v2 at /api/v2, driven by the official client (`comfy-sdk`, unmodified) against a real imaging mesh.

Every v2 answer is checked against the public contract: the pydantic models `comfy-api-proxy` ships (generated
from the v2 OpenAPI spec). That generator drops OpenAPI's `nullable: true`, so a field the spec lets be null
(`Job.started_at` before a job starts, `Job.error` of a job that did not fail, ...) is allowed null here where
`comfy-sdk`'s models of the same spec say so; nothing else is relaxed. Schemathesis then fuzzes /api/v2's own
OpenAPI document: no 5xx, no undocumented status code, every answer within its documented schema.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import time
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import schemathesis
from blake3 import blake3
from comfy_api_proxy.schemas import _generated as contract
from comfy_low.models import _generated as spec
from comfy_sdk import Comfy
from comfy_sdk.events import OutputReady, Progress, StatusChange
from comfy_sdk.outputs import Output
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from PIL import Image
from pydantic import BaseModel, create_model
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from comfymesh.config import Settings
from comfymesh.gateway.app import create_app
from comfymesh.gateway.v2 import create_v2_app
from tests.mesh import SHARED, Mesh

V2 = "/api/v2"
GRAPH = {"1": {"class_type": "LoadImage", "inputs": {"image": "placeholder"}},
         "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
         "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "v2"}}}
# ImageBlur hangs in this mesh until its job is cancelled
HANGING = {"1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
           "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 3, "sigma": 1.0}},
           "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "v2_hang"}}}
TERMINAL = {"succeeded", "failed", "canceled", "expired"}


# -- the contract ----------------------------------------------------------------------------------------------

def _spec_nullable(model: str, field: str) -> Any:
    """The SDK's type of the field where the spec lets it, or a value in it, be null; else None."""
    spec_model = getattr(spec, model, None)
    if spec_model is None or field not in spec_model.model_fields:
        return None
    annotation = spec_model.model_fields[field].annotation

    def mentions_none(tp: Any) -> bool:
        return tp is type(None) or any(mentions_none(arg) for arg in typing.get_args(tp))

    return annotation if mentions_none(annotation) else None


_RELAXED: dict[str, type[BaseModel]] = {}


def _swap(annotation: Any) -> Any:
    """`annotation` with each contract model in it replaced by its relaxed form."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return relaxed(annotation)
    args = typing.get_args(annotation)
    if not args:
        return annotation
    swapped = tuple(_swap(a) for a in args)
    if swapped == args:
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return typing.Union[swapped]  # noqa: UP007
    return origin[swapped if len(swapped) > 1 else swapped[0]]  # type: ignore[index]


def relaxed(model: type[BaseModel]) -> type[BaseModel]:
    """The contract's model, its spec-nullable fields allowing null (see the module's docstring)."""
    name = model.__name__
    if name not in _RELAXED:
        overrides: dict[str, Any] = {}
        for field, info in model.model_fields.items():
            annotation = _spec_nullable(name, field) or _swap(info.annotation)
            if annotation is not info.annotation:
                overrides[field] = (annotation, info)
        _RELAXED[name] = create_model(f"Nullable{name}", __base__=model, **overrides) if overrides else model
    return _RELAXED[name]


def valid(model: type[BaseModel], body: Any) -> Any:
    """`body` checked against the contract's `model` (and, for the same shape, the SDK's)."""
    relaxed(model).model_validate(body)
    if hasattr(spec, model.__name__):
        getattr(spec, model.__name__).model_validate(body)
    return body


def error_code(reply: Any, status: int) -> str:  # an httpx response (TestClient's comes from httpx2)
    assert reply.status_code == status, (reply.status_code, reply.text[:500])
    return str(valid(contract.ErrorEnvelope, reply.json())["error"]["code"])


# -- the mesh and the client -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("v2-home")
    started = Mesh(home, env={"COMFYMESH_TEST_HANG_NODES": "ImageBlur"})
    shutil.copy(SHARED / "data" / "astronaut.png", home / "input" / "example.png")
    try:
        yield started.start()
    finally:
        started.stop()


@pytest.fixture
def client(mesh: Mesh, monkeypatch: pytest.MonkeyPatch) -> Iterator[Comfy]:
    monkeypatch.setenv("COMFY_BASE_URL", mesh.url)
    monkeypatch.delenv("COMFY_API_KEY", raising=False)
    with Comfy() as sdk:
        yield sdk


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def sse(mesh: Mesh, path: str) -> list[tuple[str, dict[str, Any]]]:
    """Every frame of an event stream, read to its end: (event, data)."""
    frames: list[tuple[str, dict[str, Any]]] = []
    event, data = "message", list[str]()
    with mesh.http.stream("GET", path, timeout=60) as reply:
        assert reply.status_code == 200, reply.read()[:500]
        for line in reply.iter_lines():
            if not line:
                if data:
                    frames.append((event, json.loads("\n".join(data))))
                event, data = "message", []
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
    return frames


FRAME_MODELS: dict[str, type[BaseModel]] = {
    "status": contract.StatusEvent, "progress": contract.Progress, "output": contract.Output,
    "preview": contract.PreviewEvent, "log": contract.LogEvent}


def check_frames(frames: list[tuple[str, dict[str, Any]]]) -> None:
    """Each frame in the v2 catalog and its schema; one terminal status, last."""
    for event, data in frames:
        valid(FRAME_MODELS[event], data)
    statuses = [data["status"] for event, data in frames if event == "status"]
    assert statuses and statuses[-1] in TERMINAL and frames[-1][0] == "status", frames
    assert sum(status in TERMINAL for status in statuses) == 1, statuses


# -- the SDK ---------------------------------------------------------------------------------------------------

def test_sdk_uploads_an_asset_runs_the_workflow_and_downloads_the_output(mesh: Mesh, client: Comfy,
                                                                          tmp_path: Path) -> None:
    source = Image.open(SHARED / "data" / "coffee.png").convert("RGB").resize((48, 40))
    path = tmp_path / "coffee small.png"
    path.write_bytes(png(source))
    asset = client.assets.from_file(path)
    workflow = client.workflows.from_json(json.loads(json.dumps(GRAPH)))
    workflow.set_input("1", "image", asset)
    job = client.submit(workflow)
    assert job.status in ("queued", "running", "succeeded")
    job.wait(timeout=120)
    assert job.status == "succeeded", job.error
    # the upload: blake3 of the bytes, stored once, under the name the SDK gave
    assert asset.hash == "blake3:" + blake3(path.read_bytes()).hexdigest() and asset.created_new is True
    uploaded = valid(contract.Asset, mesh.http.get(f"{V2}/assets/{asset.id}").json())
    assert uploaded["size_bytes"] == path.stat().st_size and uploaded["file_path"] == "coffee small.png"

    [output] = job.outputs
    assert (output.node_id, output.type, output.content_type) == ("3", "image", "image/png")
    content = output.to_bytes()
    assert len(content) == output.size_bytes
    inverted = np.asarray(Image.open(io.BytesIO(content)).convert("RGB"), dtype=np.int16)
    assert np.abs(inverted - (255 - np.asarray(source, dtype=np.int16))).max() <= 1  # ImageInvert: 1 - x
    assert output.to_bytes(range=(0, 7)) == content[:8] == b"\x89PNG\r\n\x1a\n"
    assert output.to_bytes(range=(10, 19)) == content[10:20]

    # the job as the contract shows it; the workflow that ran names the stored file
    body = valid(contract.Job, mesh.http.get(f"{V2}/jobs/{job.id}").json())
    assert body["status"] == "succeeded" and body["queue_position"] is None and body["error"] is None
    assert body["progress"]["value"] == 1.0 and body["progress"]["nodes_done"] == body["progress"]["nodes_total"] == 3
    assert body["outputs"][0]["hash"] == "blake3:" + blake3(content).hexdigest()
    ran = client.jobs.get(job.id).get_workflow()
    assert ran.format == "api" and ran.graph["1"]["inputs"]["image"] == \
        f"assets/{asset.hash.removeprefix('blake3:')}.png"
    valid(contract.Asset, mesh.http.get(f"{V2}/assets/{output.id}").json())

    # the same bytes again: the SDK finds them by hash and mints a new asset over them, uploading nothing
    again = client.assets.from_file(path)
    again.commit()
    assert again.id != asset.id and again.hash == asset.hash and again.created_new is False
    assert mesh.http.head(f"{V2}/assets/by-hash/{asset.hash}").status_code == 200
    assert len(list((mesh.home / "input" / "assets").iterdir())) == 1


def test_sdk_cancels_a_running_job(mesh: Mesh, client: Comfy) -> None:
    job = client.submit(client.workflows.from_json(json.loads(json.dumps(HANGING))))
    for event in job.events():  # until ImageBlur runs (and hangs)
        if isinstance(event, Progress) and event.current_node == "2":
            break
    cancelled = valid(contract.Job, mesh.http.post(f"{V2}/jobs/{job.id}/cancel").json())
    assert cancelled["status"] in ("canceling", "canceled")
    job.wait(timeout=60)
    assert job.status == "canceled" and job.outputs == []
    again = job.cancel()  # idempotent
    assert again.status == "canceled"
    body = valid(contract.Job, mesh.http.get(f"{V2}/jobs/{job.id}").json())
    assert body["completed_at"] is not None and body["progress"]["nodes_done"] == 1


def test_sdk_streams_a_jobs_events(mesh: Mesh, client: Comfy) -> None:
    # a job caught running: status, progress as ImageBlur starts, then the cancel's final status
    job = client.submit(client.workflows.from_json(json.loads(json.dumps(HANGING))))
    seen: list[Any] = []
    for event in job.events():
        seen.append(event)
        if isinstance(event, Progress) and event.current_node == "2":
            job.cancel()
    assert isinstance(seen[0], StatusChange) and seen[0].status in ("queued", "running")
    assert isinstance(seen[-1], StatusChange) and seen[-1].status == "canceled"
    progress = [e for e in seen if isinstance(e, Progress)]
    assert progress and progress[-1].nodes_total == 3 and progress[-1].nodes_done == 1
    assert [p.nodes_done for p in progress] == sorted(p.nodes_done or 0 for p in progress)

    # a job that succeeds: its output comes as an event, with bytes to download; raw frames within the contract
    source = Image.new("RGB", (16, 8), (10, 200, 30))
    asset = client.assets.from_bytes(png(source), filename="green.png")
    workflow = client.workflows.from_json(json.loads(json.dumps(GRAPH)))
    workflow.set_input("1", "image", asset)
    done = client.submit(workflow)
    events = list(done.events())
    assert isinstance(events[-1], StatusChange) and events[-1].status == "succeeded"
    [ready] = [e for e in events if isinstance(e, OutputReady)]
    assert isinstance(ready.output, Output)
    pixels = np.asarray(Image.open(io.BytesIO(ready.output.to_bytes())).convert("RGB"))
    assert pixels.shape == (8, 16, 3) and (pixels == (245, 55, 225)).all()
    frames = sse(mesh, f"{V2}/jobs/{done.id}/events")  # finished: outputs, then the final status
    check_frames(frames)
    assert [event for event, _ in frames] == ["output", "status"]
    assert frames[0][1]["id"] == ready.output.id


def test_a_failed_job_ends_its_stream_with_the_error(mesh: Mesh, client: Comfy) -> None:
    broken = mesh.home / "input" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    graph = json.loads(json.dumps(GRAPH))
    graph["1"]["inputs"]["image"] = "broken.png"
    job = client.submit(client.workflows.from_json(graph))
    frames = sse(mesh, f"{V2}/jobs/{job.id}/events")
    check_frames(frames)
    assert frames[-1][1]["status"] == "failed" and frames[-2][0] == "log" and frames[-2][1]["level"] == "error"
    body = valid(contract.Job, mesh.http.get(f"{V2}/jobs/{job.id}").json())
    assert body["error"]["node_id"] == "1" and body["error"]["class_type"] == "LoadImage" and body["error"]["message"]


# -- jobs ------------------------------------------------------------------------------------------------------

def submit(mesh: Mesh, graph: dict[str, Any], **headers: str) -> httpx.Response:
    return mesh.http.post(f"{V2}/jobs", json={"workflow": graph}, headers=headers)


def test_the_job_list_pages_newest_first_with_a_cursor(mesh: Mesh, client: Comfy) -> None:
    graph = json.loads(json.dumps(GRAPH))
    graph["1"]["inputs"]["image"] = "example.png"
    ids = [valid(contract.Job, submit(mesh, graph).json())["id"] for _ in range(5)]
    first = mesh.http.get(f"{V2}/jobs", params={"limit": 2}).json()
    assert [item["id"] for item in first["jobs"]] == ids[::-1][:2] and first["next_cursor"]
    newer = submit(mesh, graph).json()["id"]  # a job submitted between pages shifts nothing
    listed = [item["id"] for item in first["jobs"]]
    cursor = first["next_cursor"]
    while cursor:
        page = mesh.http.get(f"{V2}/jobs", params={"limit": 2, "cursor": cursor}).json()
        listed += [item["id"] for item in page["jobs"]]
        cursor = page.get("next_cursor")
    assert newer not in listed and listed[:5] == ids[::-1] and len(set(listed)) == len(listed)
    summaries = list(client.list_jobs(limit=3))  # the SDK follows the cursors too
    assert [s.id for s in summaries][:6] == [newer, *ids[::-1]]
    assert all(s.create_time is not None and s.status in {"queued", "running", "succeeded", "failed", "canceled"}
               for s in summaries)
    labelled = client.submit(client.workflows.from_json(graph), metadata={"client": "acme", "run": "7"})
    assert labelled.metadata == {"client": "acme", "run": "7"}
    assert [s.id for s in client.list_jobs(metadata={"client": "acme"})] == [labelled.id]
    # the server filters (the SDK checks each item again): labelled jobs among unlabelled ones, a page at a time
    submit(mesh, graph)
    again = client.submit(client.workflows.from_json(graph), metadata={"client": "acme"})
    other = client.submit(client.workflows.from_json(graph), metadata={"client": "other"})
    acme, cursor = [], None
    while True:
        page = mesh.http.get(f"{V2}/jobs", params={"limit": 1, "metadata[client]": "acme",
                                                   **({"cursor": cursor} if cursor else {})}).json()
        acme += [item["id"] for item in page["jobs"]]
        if not (cursor := page.get("next_cursor")):
            break
    assert acme == [again.id, labelled.id]
    both = mesh.http.get(f"{V2}/jobs", params={"metadata[client]": "other", "metadata[run]": "7"}).json()
    assert both["jobs"] == [] and other.id
    for bad in ({"metadata[]": "x"}, {"metadata": "x"}, {"metadata[k]": "v" * 300}):
        assert error_code(mesh.http.get(f"{V2}/jobs", params=bad), 400) == "invalid_metadata_filter"
    many = {str(i): "x" for i in range(17)}
    assert error_code(mesh.http.post(f"{V2}/jobs", json={"workflow": graph, "metadata": many}), 422) == \
        "metadata_invalid"
    assert error_code(mesh.http.get(f"{V2}/jobs", params={"cursor": "bm9wZQ"}), 400) == "invalid_cursor"
    labelled.wait(timeout=60)
    succeeded = mesh.http.get(f"{V2}/jobs", params={"status": "succeeded", "limit": 100}).json()["jobs"]
    assert labelled.id in {item["id"] for item in succeeded} and {item["status"] for item in succeeded} == {"succeeded"}
    others = mesh.http.get(f"{V2}/jobs", params={"status": "canceled,failed", "limit": 100}).json()["jobs"]
    assert {item["status"] for item in others} <= {"canceled", "failed"} and labelled.id not in str(others)


def test_refusals_come_in_the_v2_envelope(mesh: Mesh) -> None:
    http = mesh.http
    missing_job = http.get(f"{V2}/jobs/no-such-job")
    assert error_code(missing_job, 404) == "not_found"
    assert missing_job.headers["x-content-type-options"] == "nosniff"  # the browser guard's headers stay
    assert error_code(http.put(f"{V2}/jobs"), 405) == "method_not_allowed"
    assert error_code(http.get(f"{V2}/no-such-route"), 404) == "not_found"
    assert error_code(http.post(f"{V2}/jobs/no-such-job/cancel"), 404) == "not_found"
    assert error_code(http.get(f"{V2}/jobs/no-such-job/events"), 404) == "not_found"
    ui = {"nodes": [], "links": [], "last_node_id": 0}
    assert error_code(submit(mesh, ui), 422) == "workflow_format_ui"
    missing = json.loads(json.dumps(GRAPH))
    missing["1"]["inputs"]["image"] = {"__type": "core/ASSET", "info": {"id": "9f8a1c0d-2b3e-4f56-8a7b-1c2d3e4f5a6b"}}
    reply = submit(mesh, missing)
    assert error_code(reply, 422) == "missing_asset"
    assert reply.json()["error"]["details"]["missing_ids"] == ["9f8a1c0d-2b3e-4f56-8a7b-1c2d3e4f5a6b"]
    invalid = json.loads(json.dumps(GRAPH))
    invalid["2"]["inputs"]["image"] = ["9", 0]
    reply = submit(mesh, invalid)
    assert error_code(reply, 422) == "invalid_workflow" and "2" in reply.json()["error"]["details"]["node_errors"]
    assert error_code(http.post(f"{V2}/jobs", content=b"{", headers={"content-type": "application/json"}),
                      400) == "invalid_request"
    assert error_code(http.post(f"{V2}/jobs", json={"prompt": GRAPH}), 422) == "invalid_workflow"

    # an Idempotency-Key is single-use: the second submit is refused and names the first job
    graph = json.loads(json.dumps(GRAPH))
    graph["1"]["inputs"]["image"] = "example.png"
    first = submit(mesh, graph, **{"Idempotency-Key": "key with spaces/and slashes"})
    assert first.status_code == 201, first.text
    again = submit(mesh, graph, **{"Idempotency-Key": "key with spaces/and slashes"})
    assert error_code(again, 422) == "idempotency_key_reuse"
    assert again.json()["error"]["details"]["job_id"] == first.json()["id"]
    assert http.get(first.json()["urls"]["self"]).status_code == 200  # the key never becomes a path
    assert error_code(submit(mesh, graph, **{"Idempotency-Key": "x" * 256}), 400) == "invalid_request"

    # assets
    content = b"some bytes"
    wrong = "blake3:" + "0" * 64
    reply = http.post(f"{V2}/assets", files={"file": ("a.bin", content, "application/octet-stream")},
                      data={"file_path": "a.bin", "expected_hash": wrong})
    assert error_code(reply, 409) == "hash_mismatch"
    assert error_code(http.post(f"{V2}/assets/from-hash", json={"hash": wrong}), 404) == "blob_not_found"
    assert http.head(f"{V2}/assets/by-hash/{wrong}").status_code == 404
    assert error_code(http.post(f"{V2}/assets", json={"file": "x"}), 400) == "invalid_request"
    assert error_code(http.get(f"{V2}/assets/9f8a1c0d-2b3e-4f56-8a7b-1c2d3e4f5a6b"), 404) == "not_found"
    # a refusal of the gateway's own middleware: another site's page
    assert error_code(http.get(f"{V2}/health", headers={"Origin": "http://evil.example"}), 403) == "forbidden"


def test_assets_dedup_serve_ranges_and_stay_inert(mesh: Mesh) -> None:
    http = mesh.http
    page = b"<html><script>alert(1)</script></html>"
    first = http.post(f"{V2}/assets", files={"file": ("page.html", page, "text/html")})
    assert first.status_code == 201, first.text
    body = valid(contract.Asset, first.json())
    assert body["created_new"] is True and body["hash"] == "blake3:" + blake3(page).hexdigest()
    second = http.post(f"{V2}/assets", files={"file": ("other.html", page, "text/html")})
    assert second.status_code == 200 and valid(contract.Asset, second.json())["created_new"] is False
    assert second.json()["id"] != body["id"]
    minted = http.post(f"{V2}/assets/from-hash", json={"hash": body["hash"], "file_path": "third.html"})
    assert minted.status_code == 201 and valid(contract.Asset, minted.json())["file_path"] == "third.html"
    served = http.get(body["url"])
    assert served.content == page and served.headers["content-type"] == "application/octet-stream"
    assert served.headers["content-disposition"].startswith("attachment")
    assert "sandbox" in served.headers["content-security-policy"]
    ranged = http.get(body["url"], headers={"Range": "bytes=6-13"})
    assert ranged.status_code == 206 and ranged.content == page[6:14]
    assert ranged.headers["content-range"] == f"bytes 6-13/{len(page)}"
    assert error_code(http.get(body["url"], headers={"Range": "bytes=999-1000"}), 416) == "range_not_satisfiable"
    assert http.delete(f"{V2}/assets/{body['id']}").status_code == 204
    assert error_code(http.get(f"{V2}/assets/{body['id']}"), 404) == "not_found"
    assert http.get(second.json()["url"]).content == page  # the bytes stay for the other asset


def test_health(mesh: Mesh) -> None:
    assert mesh.http.get(f"{V2}/health").json() == {"status": "healthy", "orchestrator": "ready"}


def test_auth_rate_and_body_limits_hold_on_v2(tmp_path: Path) -> None:
    """In process (no engine is reached): the gateway's middleware refuses before any v2 route runs."""
    app = create_app(Settings(home=tmp_path, api_token="s3cret-token-for-tests", max_body_bytes=2048,
                              rate_limit_per_min=1, rate_limit_burst=2))
    http = TestClient(app, base_url="http://127.0.0.1")  # not entered: no lifespan, no orchestrator client
    operations = create_v2_app().openapi()["paths"]
    routes = [(method.upper(), V2 + re.sub(r"\{[^}]+\}", "dummy", path))
              for path, methods in operations.items() for method in methods]
    assert len(routes) == 13 and ("GET", f"{V2}/jobs/dummy/events") in routes
    for method, path in [*routes, ("GET", f"{V2}/openapi.json")]:
        reply = http.request(method, path)
        assert reply.status_code == 401, (method, path)
        if method != "HEAD":
            assert error_code(reply, 401) == "unauthorized" and reply.headers["www-authenticate"].startswith("Bearer")
    bearer = {"Authorization": "Bearer s3cret-token-for-tests"}
    big = http.post(f"{V2}/assets", headers=bearer, files={"file": ("big.bin", b"x" * 4096)})
    assert error_code(big, 413) == "payload_too_large"
    unknown = {"hash": "blake3:" + "1" * 64}
    assert error_code(http.post(f"{V2}/assets/from-hash", headers=bearer, json=unknown), 404) == "blob_not_found"
    limited = http.post(f"{V2}/assets/from-hash", headers=bearer, json=unknown)
    assert error_code(limited, 429) == "rate_limited" and int(limited.headers["retry-after"]) >= 1


# -- fuzzing ---------------------------------------------------------------------------------------------------

CONTRACT_OF: dict[str, type[BaseModel]] = {
    "/jobs/{job_id}": contract.Job, "/jobs/{job_id}/cancel": contract.Job, "/assets": contract.Asset,
    "/assets/from-hash": contract.Asset, "/assets/{asset_id}": contract.Asset}


def test_v2_answers_every_generated_request_within_its_schema(mesh: Mesh) -> None:
    schema = schemathesis.openapi.from_url(mesh.url + f"{V2}/openapi.json")
    schema.config.update(base_url=mesh.url + V2)
    cases = schema.as_strategy(GenerationMode.POSITIVE) | schema.as_strategy(GenerationMode.NEGATIVE)

    @settings(derandomize=True, database=None, deadline=None, max_examples=150,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(case=cases)
    def call(case: schemathesis.Case) -> None:
        reply = case.call_and_validate(timeout=10, checks=[not_a_server_error, status_code_conformance,
                                                           response_schema_conformance])
        # and within the public contract, beyond our own document
        if case.method.upper() == "HEAD" or (case.path.endswith(("/content", "/events")) and reply.status_code < 300):
            return
        if reply.status_code >= 400:
            valid(contract.ErrorEnvelope, reply.json())
        elif case.path in CONTRACT_OF and reply.status_code != 204:
            valid(CONTRACT_OF[case.path], reply.json())
        elif (case.method.upper(), case.path) == ("POST", "/jobs"):
            valid(contract.Job, reply.json())

    call()
    start = time.monotonic()
    assert mesh.http.get(f"{V2}/health").status_code == 200 and time.monotonic() - start < 5
