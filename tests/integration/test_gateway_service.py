"""The gateway's service layer on a real mesh: events carry what /ws and SSE clients show, so following jobs
reads none back (the orchestrator's trace marks count its GetJob calls); the orchestrator pages job lists;
model folders list what validation accepts."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket

from comfymesh.contracts.job_order import JobOrder
from comfymesh.gateway.client import OrchestratorClient
from comfymesh.gateway.engine import JobQuery
from tests.mesh import SHARED, Mesh

GET_JOB = '"trace": "orchestrator.get_job"'


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("home")
    traced = Mesh(home, env={"COMFYMESH_TRACE": "1"})
    shutil.copy(SHARED / "data" / "astronaut.png", home / "input" / "example.png")
    try:
        yield traced.start()
    finally:
        traced.stop()


def prompt(tag: str) -> dict[str, Any]:
    return {"1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": tag, "images": ["2", 0]}}}


def tiny(tag: str) -> dict[str, Any]:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"filename_prefix": tag, "images": ["1", 0]}}}


def job_reads(mesh: Mesh) -> int:
    return sum(1 for line in list(mesh.logs) if line.startswith("orchestrator: ") and GET_JOB in line)


def reads_since(mesh: Mesh, before: int, job_id: str) -> int:
    """Full job reads since `before`, not counting one made now on purpose: once its mark is in the log, every
    earlier mark is too (one pipe, in order)."""
    assert mesh.http.get(f"/v1/jobs/{job_id}").status_code == 200
    deadline = time.monotonic() + 10
    while job_reads(mesh) < before + 1:
        assert time.monotonic() < deadline, "the orchestrator's trace marks never arrived"
        time.sleep(0.02)
    return job_reads(mesh) - before - 1


def submit(mesh: Mesh, graph: dict[str, Any], client_id: str = "") -> str:
    reply = mesh.http.post("/prompt", json={"prompt": graph, "client_id": client_id})
    assert reply.status_code == 200, reply.text
    return str(reply.json()["prompt_id"])


def read_until_done(socket: websocket.WebSocket, pending: set[str]) -> list[dict[str, Any]]:
    messages = []
    while pending:
        frame = socket.recv()
        if isinstance(frame, str):
            message = json.loads(frame)
            messages.append(message)
            if message["type"] == "executing" and message["data"]["node"] is None:
                pending.discard(message["data"].get("prompt_id"))
    return messages


def test_a_websocket_client_following_jobs_reads_none_back(mesh: Mesh) -> None:
    client_id = uuid.uuid4().hex
    socket = websocket.WebSocket()
    socket.connect(f"ws://{mesh.url.removeprefix('http://')}/ws?clientId={client_id}", timeout=60)
    try:
        # the hub follows the log once a first prompt's messages arrive
        read_until_done(socket, {submit(mesh, tiny(f"warm{uuid.uuid4().hex[:6]}"), client_id)})
        before = job_reads(mesh)
        repeated = prompt(f"ws{uuid.uuid4().hex[:6]}")
        ids = [submit(mesh, repeated, client_id), *(submit(mesh, tiny(f"n{i}"), client_id) for i in range(4))]
        messages = read_until_done(socket, set(ids))
        cached_id = submit(mesh, repeated, client_id)  # all from cache: its outputs replay from the event
        cached_messages = read_until_done(socket, {cached_id})
    finally:
        socket.close()
    assert reads_since(mesh, before, ids[-1]) == 0
    for job_id in ids:  # the prompt's own messages reached its client: the events named it
        assert any(m["type"] == "execution_start" and m["data"]["prompt_id"] == job_id for m in messages)
        assert any(m["type"] == "execution_success" and m["data"]["prompt_id"] == job_id for m in messages)
    cached = next(m["data"] for m in cached_messages if m["type"] == "execution_cached")
    assert sorted(cached["nodes"]) == ["1", "2", "3"]
    replayed = [m["data"] for m in cached_messages if m["type"] == "executed"]
    assert [e["node"] for e in replayed] == ["3"] and replayed[0]["output"]["images"]


def test_sse_events_carry_what_clients_show(mesh: Mesh) -> None:
    graph = prompt(f"sse{uuid.uuid4().hex[:6]}")
    first = submit(mesh, graph, "sse-client")
    before = job_reads(mesh)
    events = mesh.events(f"/v1/jobs/{first}/events")
    again = submit(mesh, graph, "sse-client")
    repeat_events = mesh.events(f"/v1/jobs/{again}/events")
    assert reads_since(mesh, before, again) == 0
    by_type = {e["event"]: e["data"] for e in events}
    assert by_type["queued"]["client_id"] == by_type["started"]["client_id"] == "sse-client"
    assert by_type["node_running"]["class_type"] and events[-1]["event"] == "completed"
    cached = next(e["data"] for e in repeat_events if e["event"] == "cached")
    assert sorted(cached["nodes"]) == ["1", "2", "3"] and cached["ui"]["3"]["images"]


def test_job_lists_are_paged_by_the_orchestrator(mesh: Mesh) -> None:
    total_before = int(mesh.http.get("/v1/jobs", params={"limit": 1}).headers["X-Total-Count"])
    ids = [submit(mesh, tiny(f"page{i}")) for i in range(30)]
    for job_id in ids:
        assert mesh.wait(job_id)["status"] == "completed"
    total = total_before + 30

    first = mesh.http.get("/v1/jobs", params={"limit": 5})
    assert first.status_code == 200 and first.headers["X-Total-Count"] == str(total)
    assert first.json()["total"] == total and len(first.json()["items"]) == 5
    assert [job["job_id"] for job in first.json()["items"]] == ids[::-1][:5]  # newest first
    pages, cursor = [], None
    for _ in range(6):  # the cursors walk the 30 newest, 5 at a time
        page = mesh.http.get("/v1/jobs", params={"limit": 5, **({"cursor": cursor} if cursor else {})}).json()
        pages.append(page["items"])
        cursor = page["next"]
    assert [job["job_id"] for page in pages for job in page] == ids[::-1]
    assert (cursor is None) == (total == 30)

    async def orchestrator_page() -> tuple[int, list[str]]:
        client = OrchestratorClient(mesh.env["COMFYMESH_ORCHESTRATOR"])
        try:
            page = await client.list_jobs(JobQuery(order=JobOrder.NEWEST, offset=5, limit=5))
        finally:
            await client.close()
        return page.total, [job.job_id for job in page.jobs]

    # the orchestrator answers one page, not every job for the gateway to cut
    assert asyncio.run(orchestrator_page()) == (total, ids[::-1][5:10])

    jobs_api = mesh.http.get("/api/jobs", params={"limit": 5, "offset": 5, "status": "completed"}).json()
    assert [job["id"] for job in jobs_api["jobs"]] == ids[::-1][5:10]
    assert jobs_api["pagination"] == {"offset": 5, "limit": 5, "total": total, "has_more": True}
    oldest = mesh.http.get("/api/jobs", params={"limit": 3, "sort_order": "asc"}).json()["jobs"]
    assert [job["id"] for job in oldest] == [job["id"] for job in mesh.http.get(
        "/api/jobs", params={"sort_order": "desc"}).json()["jobs"][::-1][:3]]
    history = mesh.http.get("/history", params={"max_items": 3}).json()
    assert list(history) == ids[-3:]


def test_jobs_api_filters_by_workflow_in_the_orchestrator(mesh: Mesh) -> None:
    workflow = uuid.uuid4().hex
    mine = [mesh.http.post("/prompt", json={"prompt": tiny(f"wf{i}"), "extra_data": {
        "extra_pnginfo": {"workflow": {"id": workflow}}}}).json()["prompt_id"] for i in range(2)]
    submit(mesh, tiny("other"))
    listing = mesh.http.get("/api/jobs", params={"workflow_id": workflow}).json()
    assert sorted(job["id"] for job in listing["jobs"]) == sorted(mine)
    assert listing["pagination"]["total"] == 2 and all(job["workflow_id"] == workflow for job in listing["jobs"])


def test_model_folders_list_what_validation_accepts(mesh: Mesh) -> None:
    checkpoints = mesh.home / "models" / "checkpoints"
    (checkpoints / "nested").mkdir(exist_ok=True)
    (checkpoints / "nested" / "good.safetensors").write_bytes(b"\0" * 16)
    (checkpoints / "pickled.ckpt").write_bytes(b"\0" * 16)  # a pickle: validation refuses it, so no listing shows it
    (mesh.home / "models" / "diffusion_models").mkdir(exist_ok=True)
    (mesh.home / "models" / "diffusion_models" / "unet.sft").write_bytes(b"\0" * 8)
    http = mesh.http
    assert http.get("/models/checkpoints").json() == ["nested/good.safetensors"]
    assert http.get("/api/models/unet").json() == ["unet.sft"]  # ComfyUI's legacy name for diffusion_models
    listed = http.get("/experiment/models/checkpoints").json()
    assert [(f["name"], f["size"]) for f in listed] == [("nested/good.safetensors", 16)]
    assert listed[0]["modified"] > 0 and listed[0]["pathIndex"] == 0
    assert [c["name"] for c in http.get("/v1/checkpoints").json()["checkpoints"]] == ["nested/good.safetensors"]
    folders = http.get("/models").json()
    assert "checkpoints" in folders and "custom_nodes" not in folders
    paths = http.get("/internal/folder_paths").json()
    assert paths["checkpoints"] == [str(checkpoints)]
    assert Path(paths["text_encoders"][1]).name == "clip"  # both of ComfyUI's folders are read
    assert http.get("/models/configs").status_code == 404
