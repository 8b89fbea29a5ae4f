"""Issue 12, finding 4: webhooks reach only what the outbound-request policy allows. Addresses are refused when
the job is submitted (both APIs, `extra_data.comfymesh` included); a name that resolves to loopback and a
redirect are refused at delivery, and the job's events keep only a generic error. The receivers here listen on
loopback and count what reaches them (the policy itself is tested in this process, with a connect guard, in
tests/unit/test_outbound.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest

from comfymesh.jobs import JobStore
from comfymesh.orchestrator.webhooks import DELIVERY_FAILED, DELIVERY_REFUSED
from tests.mesh import SHARED, Mesh
from tests.netguard import Receiver

SECRET = "whsec-security-tests"
ALLOWED_HOST = "127.0.0.2"  # the one address the mesh's outbound policy lets through
PROMPT: dict[str, Any] = {"1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
                          "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
                          "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "hook"}}}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("hooks")
    started = Mesh(home, env={"COMFYMESH_OUTBOUND_ALLOW": f"{ALLOWED_HOST}/32", "COMFYMESH_WEBHOOK_SECRET": SECRET})
    shutil.copy(SHARED / "data" / "coffee.png", home / "input" / "example.png")
    try:
        yield started.start()
    finally:
        started.stop()


@pytest.fixture
def loopback() -> Iterator[Receiver]:
    """A receiver on 127.0.0.1, which the policy refuses: nothing may ever reach it."""
    receiver = Receiver("127.0.0.1")
    yield receiver
    receiver.close()
    assert receiver.received == []


def webhook_events(mesh: Mesh, job_id: str, timeout: float = 20) -> list[tuple[str, dict[str, Any]]]:
    """The job's webhook events, once its delivery has ended (read from the job store)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        store = JobStore(mesh.home / "comfymesh.db")
        try:
            events = [(e.type, e.data) for e in store.events_after(0, job_id) if e.type.startswith("webhook_")]
        finally:
            store.close()
        if events:
            return events
        time.sleep(0.05)
    raise TimeoutError(f"no webhook event for job {job_id}")


def test_webhooks_to_refused_addresses_are_refused_at_submit(mesh: Mesh, loopback: Receiver) -> None:
    for url in (loopback.url, f"http://[::1]:{loopback.port}/hook", "http://169.254.169.254/latest/meta-data/",
                "http://[::ffff:169.254.169.254]/", f"http://2130706433:{loopback.port}/hook"):
        reply = mesh.http.post("/v1/workflows", json={"prompt": PROMPT, "webhook_url": url})
        assert reply.status_code == 400, (url, reply.text)
        problem = reply.json()
        assert problem["code"] == "invalid_prompt" and "webhook_url is refused" in problem["detail"], problem
        # ComfyUI's API: the same options in extra_data.comfymesh get the same check
        comfy = mesh.http.post("/prompt", json={"prompt": PROMPT, "extra_data": {"comfymesh": {"webhook_url": url}}})
        assert comfy.status_code == 400 and "webhook_url is refused" in comfy.json()["error"]["details"], comfy.text
    for url in ("file:///etc/passwd", "gopher://127.0.0.1:70/", "http://" + "a" * 2100 + ".example/"):
        assert mesh.http.post("/v1/workflows", json={"prompt": PROMPT, "webhook_url": url}).status_code == 422
    assert mesh.http.get("/v1/jobs").json()["items"] == []


def test_a_name_that_resolves_to_loopback_is_refused_at_delivery(mesh: Mesh, loopback: Receiver) -> None:
    job_id = mesh.submit(PROMPT, webhook_url=f"http://localhost:{loopback.port}/hook")
    assert mesh.wait(job_id)["status"] == "completed"
    assert webhook_events(mesh, job_id) == [("webhook_failed", {"error": DELIVERY_REFUSED})]


def test_a_redirect_to_loopback_is_not_followed(mesh: Mesh, loopback: Receiver) -> None:
    redirecting = Receiver(ALLOWED_HOST, status=302, location=f"{loopback.url}?to=interrupt")
    try:
        job_id = mesh.submit(PROMPT, webhook_url=redirecting.url)
        assert mesh.wait(job_id)["status"] == "completed"
        # the target's answer stays out of the job: no status, no body, no port
        assert webhook_events(mesh, job_id) == [("webhook_failed", {"error": DELIVERY_FAILED})]
    finally:
        redirecting.close()
    assert len(redirecting.received) == 1


def test_an_allowed_receiver_gets_a_signed_delivery(mesh: Mesh) -> None:
    receiver = Receiver(ALLOWED_HOST)
    try:
        reply = mesh.http.post("/prompt", json={"prompt": PROMPT,
                                                "extra_data": {"comfymesh": {"webhook_url": receiver.url}}})
        job_id = reply.json()["prompt_id"]
        assert webhook_events(mesh, job_id) == [("webhook_delivered", {"attempt": 1})]
    finally:
        receiver.close()
    headers, body = receiver.received[0]
    assert json.loads(body)["job_id"] == job_id and json.loads(body)["status"] == "completed"
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(SECRET.encode(), signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"
