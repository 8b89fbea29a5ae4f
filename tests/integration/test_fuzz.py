"""Nothing lost, nothing let in: fuzzed requests against a real mesh never get a 5xx or crash a service.

Schemathesis drives the /v1 OpenAPI (the never-ending `/v1/events` stream excluded, per-job streams
bounded by a read timeout); hypothesis drives `/prompt` and `/v1/workflows` with graphs built from the
live node catalog, then mutated, sent whole or chunked. Requests carry no Origin, our own, or another
site's (which must get a 403). Every rejection must be a 4xx that says what is wrong, and afterwards
every service still runs and a normal job still completes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from tests.mesh import Mesh

FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
NORMAL = {"1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
          "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
          "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "fuzz_after"}}}
HUGE = [10**30, -10**30, 2**63, 2**64, -2**63 - 1, 1e308, -1e308, 5e-324, "nan", "inf", "-inf", "1e999",
        "", "\u0000", "\U0001f984", "a\u202eb", "x" * 70_000]
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
# no Origin (scripts), our own pages', another site's, a sandboxed page's
ORIGINS = st.sampled_from(["", "own", "http://evil.example", "null"])

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=12)
           | st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(HUGE))
junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=10)


def _spec(raw: Any) -> tuple[Any, dict[str, Any]]:
    return raw[0], (raw[1] if len(raw) > 1 and isinstance(raw[1], dict) else {})


def _widget(draw: st.DrawFn, kind: Any, options: dict[str, Any]) -> Any:
    if kind == "COMBO":  # ComfyUI's newer form: ["COMBO", {"options": [...]}]
        kind = list(options.get("options") or [])
    if isinstance(kind, list):
        return draw(st.sampled_from(kind)) if kind else draw(st.text(max_size=8))
    low, high = options.get("min", 0), options.get("max", 64)
    if kind == "INT":
        return draw(st.integers(low, min(high, low + 200)))  # small: valid graphs must run quickly
    if kind == "FLOAT":
        # as floats first: a bound such as -(2**63 - 1) has no exact float, which hypothesis refuses
        return draw(st.floats(float(low), float(min(high, low + 4.0))))
    if kind == "BOOLEAN":
        return draw(st.booleans())
    return draw(st.text(max_size=16))


@st.composite
def graphs(draw: st.DrawFn, catalog: dict[str, Any]) -> dict[str, Any]:
    """A catalog-typed graph ending in an output node: often valid, sometimes not (links by type only)."""
    makers = sorted(name for name, node in catalog.items() if node["output"])
    prompt: dict[str, Any] = {}
    produced: list[tuple[str, int, str]] = []
    for index in range(1, draw(st.integers(1, 4)) + 1):
        have = {out for _, _, out in produced}
        linkable = [name for name in makers if all(
            isinstance(_spec(raw)[0], list) or _spec(raw)[0] in have | WIDGET_TYPES
            for raw in catalog[name]["input"].get("required", {}).values())]
        name = draw(st.sampled_from(linkable) | st.sampled_from(makers) if linkable else st.sampled_from(makers))
        inputs = {}
        for input_name, raw in catalog[name]["input"].get("required", {}).items():
            kind, options = _spec(raw)
            if isinstance(kind, list) or kind in WIDGET_TYPES:
                inputs[input_name] = _widget(draw, kind, options)
            else:
                matching = [[node, slot] for node, slot, out in produced if out == kind]
                inputs[input_name] = draw(st.sampled_from(matching)) if matching else [
                    str(draw(st.integers(0, index + 1))), draw(st.integers(0, 2))]
        prompt[str(index)] = {"class_type": name, "inputs": inputs}
        produced += [(str(index), slot, out) for slot, out in enumerate(catalog[name]["output"])]
    images = [[node, slot] for node, slot, out in produced if out == "IMAGE"] or [["1", 0]]
    output = draw(st.sampled_from(["SaveImage", "PreviewImage"]))
    prompt["out"] = {"class_type": output, "inputs": {"images": draw(st.sampled_from(images)),
                                                      **({"filename_prefix": "fuzz"} if output == "SaveImage" else {})}}
    return prompt


@st.composite
def mutated(draw: st.DrawFn, catalog: dict[str, Any]) -> Any:
    """A graph with one kind of damage: wrong types, missing inputs, bad links, huge numbers, junk."""
    prompt = draw(graphs(catalog))
    node_id = draw(st.sampled_from(sorted(prompt)))
    node = prompt[node_id]
    inputs = node["inputs"]
    name = draw(st.sampled_from(sorted(inputs))) if inputs else "image"
    damage = draw(st.sampled_from(["none"] * 3 + ["value", "drop", "link", "class", "node", "inputs", "id", "prompt"]))
    if damage == "value":
        inputs[name] = draw(junk | st.sampled_from(HUGE) | st.fixed_dictionaries({"__value__": junk}))
    elif damage == "drop":
        inputs.pop(name, None)
    elif damage == "link":
        inputs[name] = draw(st.lists(junk, max_size=3) | st.tuples(st.sampled_from(sorted(prompt)), junk).map(list)
                            | st.tuples(junk, st.integers(-3, 5)).map(list))
    elif damage == "class":
        node["class_type"] = draw(junk | st.sampled_from(sorted(catalog)).map(str.lower))
    elif damage == "node":
        prompt[node_id] = draw(junk)
    elif damage == "inputs":
        node["inputs"] = draw(junk)
    elif damage == "id":
        prompt[draw(st.text(max_size=8) | st.sampled_from(["", "\u0000", "-1", "1e3"]))] = prompt.pop(node_id)
    elif damage == "prompt":
        return draw(junk)
    return prompt


def bodies(catalog: dict[str, Any], route: str) -> st.SearchStrategy[bytes]:
    """Request bodies for `/prompt` or `/v1/workflows`: JSON objects with junk options, or not JSON at all."""
    prompt = mutated(catalog)
    if route == "/prompt":
        options = {"client_id": junk, "extra_data": junk, "number": junk, "front": junk, "prompt_id": junk,
                   "partial_execution_targets": junk}
        wrapped = st.fixed_dictionaries({"prompt": prompt}, optional=options)
    else:
        options = {"client_id": st.text(max_size=8) | junk, "extra_data": junk, "job_id": junk,
                   "priority": junk, "front": junk, "timeout_s": junk, "webhook_url": st.text(max_size=20) | junk}
        wrapped = st.fixed_dictionaries({"prompt": prompt}, optional=options) | prompt
    as_json = (wrapped | junk).map(lambda body: json.dumps(body).encode())
    raw = st.sampled_from([b"", b"{", b"\xff\xfe{}", b'{"prompt": NaN}', b"[" * 5000, b'{"prompt": 1e999}',
                           b'"\\ud800"', b"null"]) | st.binary(max_size=32)
    return as_json | raw


def assert_clear(reply: httpx.Response) -> None:
    """Not a server error; a rejection is JSON that says what is wrong (ComfyUI's `error` or a `detail`)."""
    assert reply.status_code < 500, reply.text[:500]
    if reply.status_code >= 400:
        body = reply.json()
        if reply.request.url.path.startswith("/v1/"):  # /v1 answers RFC 9457 problems
            assert reply.headers["content-type"] == "application/problem+json", reply.headers
            assert body["status"] == reply.status_code and body["type"].startswith("urn:comfymesh:problem:"), body
        if isinstance(body.get("error"), dict):
            assert isinstance(body["error"]["type"], str) and body["error"]["message"], body
        else:
            assert body.get("detail") or isinstance(body.get("error"), str), body


def origin_header(mesh: Mesh, origin: str) -> dict[str, str]:
    return {"Origin": mesh.url if origin == "own" else origin} if origin else {}


def chunked(body: bytes, size: int) -> bytes | Iterator[bytes]:
    """The body as is, or as an iterator, which httpx sends chunked (no Content-Length)."""
    return iter([body[i:i + size] for i in range(0, len(body), size)]) if size else body


def assert_alive(mesh: Mesh) -> None:
    dead = [s.spec.name for s in mesh.supervisor.services if s.process is None or s.process.poll() is not None]
    assert not dead, (dead, "\n".join(mesh.logs[-40:]))
    assert mesh.http.get("/readyz").status_code == 200
    for listing in ("/v1/jobs?limit=1000", "/api/jobs", "/history", "/queue"):
        reply = mesh.http.get(listing)
        assert reply.status_code == 200, (listing, reply.text[:500])
    job = mesh.wait(mesh.submit(NORMAL))
    assert job["status"] == "completed", job


# a saved workflow whose typed endpoint (/v1/workflows/fuzzed/run) joins the schema; its inputs keep every run
# cheap (a 32×16 image of any colour, under any name)
SAVED = {"workflow": {"1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 16, "batch_size": 1,
                                                                   "color": 0}},
                      "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "fz"}}},
         "inputs": [{"name": "color", "node_id": "1", "input": "color"},
                    {"name": "prefix", "node_id": "2", "input": "filename_prefix"}]}


def test_v1_api_answers_every_generated_request_within_its_schema(imaging_mesh: Mesh) -> None:
    assert imaging_mesh.http.put("/v1/workflows/fuzzed", json=SAVED).status_code in (200, 201)
    schema = schemathesis.openapi.from_url(imaging_mesh.url + "/v1/openapi.json").exclude(path="/v1/events")
    assert "/v1/workflows/fuzzed/run" in schema.raw_schema["paths"]  # the per-workflow route is fuzzed too
    cases = (schema.as_strategy(GenerationMode.POSITIVE) | schema.as_strategy(GenerationMode.NEGATIVE))

    @settings(FUZZ, max_examples=150)
    @given(case=cases, origin=ORIGINS)
    def call(case: schemathesis.Case, origin: str) -> None:
        # a job's event stream follows the job; none of these ids names a running one, so it ends or 404s
        reply = case.call_and_validate(headers=origin_header(imaging_mesh, origin), timeout=10,
                                       checks=[not_a_server_error, status_code_conformance,
                                               response_schema_conformance])
        if origin not in ("", "own"):
            assert reply.status_code == 403, reply.text[:500]

    call()
    assert_alive(imaging_mesh)


def test_fuzzed_prompts_get_a_clear_4xx_and_break_nothing(imaging_mesh: Mesh) -> None:
    catalog = imaging_mesh.http.get("/object_info").json()
    headers = {"content-type": "application/json"}

    @settings(FUZZ, max_examples=200)
    @given(route=st.sampled_from(["/prompt", "/v1/workflows"]), data=st.data(), origin=ORIGINS,
           chunk=st.sampled_from([0, 0, 64, 8192]))
    def post(route: str, data: st.DataObject, origin: str, chunk: int) -> None:
        body = data.draw(bodies(catalog, route))
        reply = imaging_mesh.http.post(route, content=chunked(body, chunk),
                                       headers={**headers, **origin_header(imaging_mesh, origin)})
        assert_clear(reply)
        if origin not in ("", "own"):
            assert reply.status_code == 403, reply.text[:500]

    post()
    assert_alive(imaging_mesh)
