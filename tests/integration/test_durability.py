"""Timeouts, heartbeats, cancellation, webhooks and a cache that survives restarting every service."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.mesh import SHARED, Mesh, free_port


def invert_graph(node: str = "ImageInvert", prefix: str = "d") -> dict[str, Any]:
    inputs: dict[str, Any] = {"image": ["1", 0]}
    if node == "ImageBlur":
        inputs.update(blur_radius=2, sigma=1.0)
    return {"1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
            "2": {"class_type": node, "inputs": inputs},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}}}


@pytest.fixture(scope="module")
def hanging_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """ImageBlur hangs silently (test-only fault switch); heartbeats time out after 4 s (a cancel sent right after
    the job starts must land first); webhooks may reach the receivers these tests run on 127.0.0.1."""
    home = tmp_path_factory.mktemp("hang")
    mesh = Mesh(home, env={"COMFYMESH_TEST_HANG_NODES": "ImageBlur", "COMFYMESH_HEARTBEAT_TIMEOUT_S": "4",
                           "COMFYMESH_OUTBOUND_ALLOW": "127.0.0.1",
                           "COMFYMESH_MAX_ATTEMPTS": "1", "COMFYMESH_WEBHOOK_SECRET": "whsec-test",
                           "COMFYMESH_MAX_RUNNING_JOBS": "2", "COMFYMESH_MAX_QUEUE": "1",
                           "COMFYMESH_RATE_LIMIT_PER_MIN": "60", "COMFYMESH_RATE_LIMIT_BURST": "40"})
    shutil.copy(SHARED / "data" / "coffee.png", home / "input" / "example.png")
    try:
        yield mesh.start()
    finally:
        mesh.stop()


def test_silent_stage_fails_the_job_naming_the_node_and_the_next_job_runs(hanging_mesh: Mesh) -> None:
    started = time.monotonic()
    job = hanging_mesh.wait(hanging_mesh.submit(invert_graph("ImageBlur")), timeout=30)
    assert job["status"] == "failed"
    assert job["error"]["type"] == "timeout" and job["error"]["node_id"] == "2"
    assert job["error"]["node_type"] == "ImageBlur" and "heartbeat" in job["error"]["message"]
    assert time.monotonic() - started < 15
    follow_up = hanging_mesh.wait(hanging_mesh.submit(invert_graph("ImageInvert")), timeout=30)
    assert follow_up["status"] == "completed"


def test_overall_timeout_per_job(hanging_mesh: Mesh) -> None:
    reply = hanging_mesh.http.post("/v1/workflows", json={"prompt": invert_graph("ImageBlur", "t2"), "timeout_s": 0.5})
    job = hanging_mesh.wait(reply.json()["job_id"], timeout=30)
    assert job["status"] == "failed" and job["error"]["type"] == "timeout"
    assert "0.5 s timeout" in job["error"]["message"] and job["error"]["node_id"] == "2"


def test_cancel_a_running_job_frees_its_slot(hanging_mesh: Mesh) -> None:
    reply = hanging_mesh.http.post("/v1/workflows", json={"prompt": invert_graph("ImageBlur", "c"),
                                                          "timeout_s": 600})
    job_id = reply.json()["job_id"]
    deadline = time.monotonic() + 10
    while hanging_mesh.http.get(f"/v1/jobs/{job_id}").json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert hanging_mesh.http.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    job = hanging_mesh.wait(job_id, timeout=10)
    assert job["status"] == "cancelled"
    # the stage's slots are free again: two jobs at once still run
    ids = [hanging_mesh.submit(invert_graph("ImageInvert", f"after{i}")) for i in range(2)]
    assert all(hanging_mesh.wait(i, timeout=30)["status"] == "completed" for i in ids)


class _WebhookSink:
    """A real HTTP receiver: answers 503 while `refusing` (or for the first `fail_first` deliveries),
    records the delivered ones (headers, body)."""

    def __init__(self, fail_first: int = 0, refusing: bool = False) -> None:
        self.fail_first = fail_first
        self.accept = threading.Event()
        if not refusing:
            self.accept.set()
        self.attempts: list[float] = []
        self.delivered: list[tuple[dict[str, str], bytes]] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                sink.attempts.append(time.monotonic())
                if sink.fail_first > 0 or not sink.accept.is_set():
                    sink.fail_first -= 1
                    self.send_response(503)
                else:
                    sink.delivered.append((dict(self.headers), body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, what: list[Any], message: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not what:
            assert time.monotonic() < deadline, message
            time.sleep(0.05)


def test_signed_webhook_is_retried_until_delivered(hanging_mesh: Mesh) -> None:
    sink = _WebhookSink(fail_first=1)  # the first delivery fails: the sender must retry
    try:
        reply = hanging_mesh.http.post("/v1/workflows", json={"prompt": invert_graph("ImageInvert", "hook"),
                                                              "webhook_url": sink.url})
        job_id = reply.json()["job_id"]
        sink.wait_for(sink.delivered, "webhook never delivered")
    finally:
        sink.server.shutdown()
    headers, body = sink.delivered[0]
    payload = json.loads(body)
    assert payload["job_id"] == job_id and payload["status"] == "completed"
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(b"whsec-test", signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"


def test_cache_survives_restarting_every_service(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path)
    shutil.copy(SHARED / "data" / "astronaut.png", tmp_path / "input" / "example.png")
    prompt = json.loads((SHARED / "workflows" / "imaging_pipeline.json").read_text())
    mesh.start()
    try:
        first = mesh.wait(mesh.submit(prompt))
        assert first["status"] == "completed"
        for name in ("imaging0", "orchestrator", "gateway"):
            mesh.restart(name)
        stage_calls_before = sum("RunStage" in line for line in mesh.logs)
        job_id = mesh.submit(prompt)
        events = mesh.events(f"/v1/jobs/{job_id}/events")
        second = mesh.wait(job_id)
    finally:
        mesh.stop()
    assert second["status"] == "completed" and second["outputs"] == first["outputs"]
    assert [e["event"] for e in events] == ["queued", "started", "cached", "completed"]
    assert sorted(events[2]["data"]["nodes"]) == ["1", "2", "3", "4", "5", "6"]
    assert {n["state"] for n in second["nodes"]} == {"cached"}
    assert sum("RunStage" in line for line in mesh.logs) == stage_calls_before


def test_full_queue_answers_429_with_retry_after(hanging_mesh: Mesh) -> None:
    running = [hanging_mesh.http.post("/v1/workflows", json={"prompt": invert_graph("ImageBlur", f"q{i}"),
                                                             "timeout_s": 600}).json()["job_id"] for i in range(2)]
    queued = hanging_mesh.http.post("/v1/workflows", json={"prompt": invert_graph("ImageBlur", "q2")})
    assert queued.status_code == 202
    refused = hanging_mesh.http.post("/v1/workflows", json={"prompt": invert_graph("ImageInvert", "q3")})
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    assert refused.json()["code"] == "queue_full"
    comfy = hanging_mesh.http.post("/prompt", json={"prompt": invert_graph("ImageInvert", "q4")})
    assert comfy.status_code == 429
    for job_id in [*running, queued.json()["job_id"]]:
        hanging_mesh.http.post(f"/v1/jobs/{job_id}/cancel")
    assert hanging_mesh.wait(queued.json()["job_id"], timeout=10)["status"] == "cancelled"



def test_webhook_cut_short_by_an_orchestrator_crash_is_sent_after_restart(hanging_mesh: Mesh) -> None:
    sink = _WebhookSink(refusing=True)  # refuses until the orchestrator has died mid-retry
    try:
        reply = hanging_mesh.http.post("/v1/workflows", json={"prompt": invert_graph("ImageInvert", "crashhook"),
                                                              "webhook_url": sink.url})
        job_id = reply.json()["job_id"]
        sink.wait_for(sink.attempts, "no delivery attempt")
        hanging_mesh.kill("orchestrator")  # mid-backoff: the delivery never ended
        sink.accept.set()
        hanging_mesh.restart("orchestrator")
        sink.wait_for(sink.delivered, "the webhook was not sent again after the restart")
    finally:
        sink.server.shutdown()
    assert json.loads(sink.delivered[0][1])["job_id"] == job_id


def test_rate_limit_per_client(hanging_mesh: Mesh) -> None:
    """60 a minute with bursts of 40: a burst of 60 cancels of an unknown job gets 429s with Retry-After."""
    replies = [hanging_mesh.http.post("/v1/jobs/nope/cancel") for _ in range(60)]
    codes = [r.status_code for r in replies]
    assert 404 in codes and 429 in codes
    limited = next(r for r in replies if r.status_code == 429)
    assert int(limited.headers["retry-after"]) >= 1 and limited.json()["code"] == "rate_limited"
    assert hanging_mesh.http.get("/v1/jobs").status_code == 200  # reads are not limited
