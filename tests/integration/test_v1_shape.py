"""One shape everywhere on /v1, on a real mesh: RFC 9457 problems for every error (ComfyUI's routes keep
ComfyUI's body), integers as integers, absolute URLs, paged job lists with a cursor, unknown fields refused,
idempotency keys kept apart from job ids, node states final after a cancel, /v1/events live by default."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.mesh import Mesh

PROBLEM = "application/problem+json"
BODY_LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    # ImageBlur hangs until cancelled: a job that is surely running when the test cancels it
    started = Mesh(tmp_path_factory.mktemp("v1-home"), env={"COMFYMESH_TEST_HANG_NODES": "ImageBlur",
                                                             "COMFYMESH_MAX_BODY_BYTES": str(BODY_LIMIT)})
    try:
        yield started.start()
    finally:
        started.stop()


def tiny(tag: str) -> dict[str, Any]:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"filename_prefix": tag, "images": ["1", 0]}}}


def assert_problem(reply: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith(PROBLEM), reply.headers
    body: dict[str, Any] = reply.json()
    assert body["type"] == f"urn:comfymesh:problem:{code}" and body["code"] == code, body
    assert body["status"] == status and body["title"] and body["detail"], body
    assert body["instance"] == reply.request.url.path, body
    return body


def test_every_v1_error_is_a_problem_and_comfyui_routes_keep_their_body(mesh: Mesh) -> None:
    assert_problem(mesh.http.get("/v1/jobs/nope"), 404, "not_found")
    assert_problem(mesh.http.get("/v1/no-such-route"), 404, "not_found")
    assert_problem(mesh.http.delete("/v1/jobs/nope"), 405, "method_not_allowed")
    invalid = assert_problem(mesh.http.get("/v1/jobs", params={"limit": 0}), 422, "invalid_request")
    assert invalid["errors"][0]["loc"] == ["query", "limit"], invalid
    assert_problem(mesh.http.get("/v1/jobs", params={"cursor": "not-ours"}), 422, "invalid_request")
    assert_problem(mesh.http.post("/v1/workflows", content=b"{", headers={"content-type": "application/json"}),
                   400, "invalid_prompt")
    assert_problem(mesh.http.post("/v1/workflows", content=b"{}", headers={"content-type": "text/plain"}),
                   415, "unsupported_media_type")
    too_big = mesh.http.post("/v1/workflows", content=b"x" * (BODY_LIMIT + 1))
    assert_problem(too_big, 413, "request_too_large")

    refused = assert_problem(mesh.http.post("/v1/workflows", json={"prompt": {
        "1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "images": ["9", 0]}}}}),
        400, "prompt_outputs_failed_validation")
    assert refused["node_errors"]["1"]["errors"], refused
    # ComfyUI's own route answers the same prompt in ComfyUI's shape
    comfy = mesh.http.post("/prompt", json={"prompt": {
        "1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "images": ["9", 0]}}}})
    assert comfy.status_code == 400 and comfy.headers["content-type"] == "application/json"
    assert comfy.json()["error"]["type"] == "prompt_outputs_failed_validation" and "type" not in comfy.json()


def test_unknown_fields_are_refused(mesh: Mesh) -> None:
    reply = mesh.http.post("/v1/workflows", json={"prompt": tiny("u"), "job_id": "mine", "timeout": 5})
    body = assert_problem(reply, 422, "invalid_request")
    assert sorted(e["loc"][-1] for e in body["errors"]) == ["job_id", "timeout"], body


def test_numbers_are_integers_and_urls_absolute(mesh: Mesh) -> None:
    reply = mesh.http.post("/v1/workflows", json={"prompt": tiny(f"n{uuid.uuid4().hex[:6]}")})
    accepted = reply.json()
    assert isinstance(accepted["number"], int) and '"number":' + str(accepted["number"]) in reply.text
    job_url = f"{mesh.url}/v1/jobs/{accepted['job_id']}"
    assert accepted["status_url"] == reply.headers["location"] == job_url
    assert accepted["events_url"] == job_url + "/events"
    job = mesh.wait(accepted["job_id"])
    assert job["number"] == accepted["number"] and isinstance(job["number"], int)
    assert job["images"] and all(image["url"].startswith(f"{mesh.url}/view?") for image in job["images"])
    assert mesh.http.get(job["images"][0]["url"]).content[:4] == b"\x89PNG"
    completed = mesh.events(f"/v1/jobs/{job['job_id']}/events")[-1]
    assert completed["event"] == "completed"
    assert [image["url"] for image in completed["data"]["images"]] == [image["url"] for image in job["images"]]


def test_idempotency_keys_are_checked_and_kept_apart_from_job_ids(mesh: Mesh) -> None:
    key = f"order-{uuid.uuid4().hex}.v1~x_y"
    body = {"prompt": tiny(f"i{uuid.uuid4().hex[:6]}"), "timeout_s": 30}
    first = mesh.http.post("/v1/workflows", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == 202 and not first.json()["existing"], first.text
    job_id = first.json()["job_id"]
    assert job_id != key and str(uuid.UUID(job_id)) == job_id  # ours, whatever the key
    # the same body (keys in another order) under the same key: the same job
    again = mesh.http.post("/v1/workflows", content=json.dumps(dict(reversed(body.items()))),
                           headers={"Idempotency-Key": key, "content-type": "application/json"})
    assert again.status_code == 202 and again.json()["job_id"] == job_id and again.json()["existing"]
    conflict = mesh.http.post("/v1/workflows", json={**body, "timeout_s": 31}, headers={"Idempotency-Key": key})
    assert_problem(conflict, 409, "idempotency_conflict")
    for bad in ("has space", "a/b", "k" * 129, "é", ""):
        before = mesh.http.get("/v1/jobs", params={"limit": 1}).json()["total"]
        reply = mesh.http.post("/v1/workflows", json=body, headers=[(b"Idempotency-Key", bad.encode())])
        assert_problem(reply, 422, "invalid_request")
        assert mesh.http.get("/v1/jobs", params={"limit": 1}).json()["total"] == before  # nothing queued
    assert mesh.http.get(f"/v1/jobs/{job_id}").status_code == 200


def test_job_lists_page_with_a_cursor_and_failed_jobs_carry_their_error(mesh: Mesh) -> None:
    ids = [mesh.submit(tiny(f"p{i}")) for i in range(3)]
    for job_id in ids:
        mesh.wait(job_id)
    page = mesh.http.get("/v1/jobs", params={"limit": 2}).json()
    assert set(page) == {"items", "total", "next"} and [j["job_id"] for j in page["items"]] == ids[::-1][:2]
    mesh.wait(mesh.submit(tiny("between")))  # a job that arrives between two pages moves neither
    rest = mesh.http.get("/v1/jobs", params={"limit": 2, "cursor": page["next"]}).json()
    assert rest["items"][0]["job_id"] == ids[0] and rest["total"] == page["total"] + 1
    last = mesh.http.get("/v1/jobs", params={"limit": rest["total"]}).json()
    assert last["next"] is None and len(last["items"]) == rest["total"]
    assert mesh.http.get("/v1/jobs", params={"status": "queued"}).json()["items"] == []


def test_a_failed_job_in_the_list_carries_its_error(mesh: Mesh) -> None:
    # a timeout fails the job while its hanging node runs
    job_id = mesh.submit({"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1,
                                                                        "color": 0}},
                          "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1,
                                                                       "sigma": 1.0}},
                          "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "f", "images": ["2", 0]}}},
                         timeout_s=1)
    job = mesh.wait(job_id)
    assert job["status"] == "failed" and job["error"]["message"], job
    listed = mesh.http.get("/v1/jobs", params={"status": "failed"}).json()["items"]
    assert next(j for j in listed if j["job_id"] == job_id)["error"] == job["error"]
    assert "running" not in {node["state"] for node in job["nodes"]}, job["nodes"]


def hanging(tag: str) -> dict[str, Any]:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}},
            "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": tag, "images": ["2", 0]}}}


def test_a_cancelled_jobs_nodes_are_final(mesh: Mesh) -> None:
    job_id = mesh.submit(hanging("c"))
    with mesh.http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=60) as stream:
        event = ""
        for line in stream.iter_lines():
            event = line[6:].strip() if line.startswith("event:") else event
            if line.startswith("data:") and event == "node_running" and json.loads(line[5:])["node_id"] == "2":
                break
    assert mesh.http.get(f"/v1/jobs/{job_id}").json()["nodes"][1]["state"] == "running"
    cancelled = mesh.http.post(f"/v1/jobs/{job_id}/cancel").json()
    job = mesh.wait(job_id)
    assert job["status"] == "cancelled", job
    states = {node["node_id"]: node["state"] for node in job["nodes"]}
    assert states == {"1": "done", "2": "pending", "3": "pending"}, (states, cancelled)


def first_event(mesh: Mesh, params: dict[str, Any], keep_submitting: bool) -> dict[str, Any]:
    """The first event of /v1/events with `params`; with `keep_submitting`, tiny jobs go in until one comes
    (the stream may subscribe after any given submit)."""
    got: list[dict[str, Any]] = []
    arrived = threading.Event()

    def read() -> None:
        with httpx.stream("GET", f"{mesh.url}/v1/events", params=params, timeout=60) as stream:
            current: dict[str, Any] = {}
            for line in stream.iter_lines():
                if line.startswith("id:"):
                    current["id"] = int(line[3:].strip())
                elif line.startswith("event:"):
                    current["event"] = line[6:].strip()
                elif line.startswith("data:"):
                    current["data"] = json.loads(line[5:])
                    got.append(current)
                    arrived.set()
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while not arrived.wait(0.2 if keep_submitting else 60):
        assert time.monotonic() < deadline, "no event arrived"
        mesh.submit(tiny("live"))
    return got[0]


def test_the_event_stream_starts_live_unless_asked_to_replay(mesh: Mesh) -> None:
    old = mesh.submit(tiny("old"))
    mesh.wait(old)
    old_events = mesh.events(f"/v1/jobs/{old}/events")
    newest = max(e["id"] for e in old_events)
    live = first_event(mesh, {}, keep_submitting=True)
    assert live["data"]["job_id"] != old and live["event"] == "queued" and live["id"] > newest, live
    replayed = first_event(mesh, {"after": 0}, keep_submitting=False)
    assert replayed["event"] == "queued" and replayed["id"] <= old_events[0]["id"], replayed
    resumed = first_event(mesh, {"after": newest - 1}, keep_submitting=False)
    assert resumed["data"]["job_id"] == old and resumed["event"] == "completed", resumed
