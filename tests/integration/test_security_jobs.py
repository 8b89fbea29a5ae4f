"""Issue 12, finding 1: no job can jam the queue. Clients set only documented options, in their ranges (refused
with a 400 at the gateway, and again by the orchestrator); a job stored with bad options by an older version
fails alone, with an error, and the jobs after it run."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from comfymesh.gateway.client import OrchestratorClient
from comfymesh.gateway.engine import NewJob
from comfymesh.jobs import JobStore
from tests.mesh import SHARED, Mesh

PIPELINE: dict[str, Any] = json.loads((SHARED / "workflows" / "imaging_pipeline.json").read_text())
POISONS = [{"timeout_s": -1}, {"timeout_s": 1e12}, {"timeout_s": "forever"}, {"user": "admin", "timeout_s": 60}]
# what an older version stored as it came (it read the options from the client's extra_data)
STORED_POISONS: list[Any] = [{"timeout_s": -1}, {"timeout_s": 1e12}, {"timeout_s": "forever"}, {"webhook_url": 7},
                             {"user": ["admin"]}, "junk"]


def pipeline(prefix: str) -> dict[str, Any]:
    prompt = json.loads(json.dumps(PIPELINE))
    prompt["6"]["inputs"]["filename_prefix"] = prefix
    return prompt


def test_poison_prompts_are_refused_and_the_next_job_completes(imaging_mesh: Mesh) -> None:
    for poison in POISONS:
        reply = imaging_mesh.http.post("/prompt", json={"prompt": pipeline("poison"),
                                                        "extra_data": {"comfymesh": poison}})
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["type"] == "invalid_prompt" and reply.json()["node_errors"] == {}
    # /v1 has fields for them, and refuses the same values (and the reserved key) in its own format
    for body in ({"timeout_s": -1}, {"timeout_s": 8 * 24 * 3600}, {"extra_data": {"comfymesh": {"timeout_s": 60}}}):
        assert imaging_mesh.http.post("/v1/workflows", json={"prompt": pipeline("poison"), **body}).status_code == 422
    assert imaging_mesh.http.get("/v1/jobs", params={"status": "queued"}).json()["items"] == []
    accepted = imaging_mesh.http.post("/prompt", json={"prompt": pipeline("after"),
                                                       "extra_data": {"comfymesh": {"timeout_s": 120}}})
    assert accepted.status_code == 200, accepted.text
    assert imaging_mesh.wait(accepted.json()["prompt_id"], timeout=60)["status"] == "completed"


def test_the_orchestrator_refuses_bad_options_itself(imaging_mesh: Mesh) -> None:
    """Defence in depth: a caller of the gRPC API directly gets INVALID_ARGUMENT (HTTP 400 at the gateway)."""
    async def submit(**options: Any) -> Any:
        client = OrchestratorClient(imaging_mesh.env["COMFYMESH_ORCHESTRATOR"])
        try:
            return await client.submit(NewJob(pipeline("grpc"), **options))
        finally:
            await client.close()

    for options in ({"timeout_s": -1.0}, {"timeout_s": float("nan")}, {"priority": float("inf")},
                    {"extra_data": {"comfymesh": {"timeout_s": -1}}}, {"webhook_url": "gopher://x/"},
                    {"job_id": "x" * 500}):
        result = asyncio.run(submit(**options))
        assert not result.accepted and result.error["type"] == "invalid_prompt", (options, result)
        assert "invalid job options" in result.error["details"]


def test_jobs_stored_with_bad_options_fail_alone_after_a_restart(imaging_mesh: Mesh) -> None:
    """An older version stored whatever a client sent: more such jobs than the orchestrator runs at once, one
    of them left running by a crash, must not jam the queue started on that database."""
    imaging_mesh.kill("orchestrator")
    store = JobStore(imaging_mesh.home / "comfymesh.db")
    nodes = {node_id: node["class_type"] for node_id, node in PIPELINE.items()}
    poisoned = [f"old-poison-{index}" for index in range(len(STORED_POISONS))]
    try:
        for index, (job_id, options) in enumerate(zip(poisoned, STORED_POISONS, strict=True)):
            store.add_job(job_id, -100 + index, pipeline("old"), {"comfymesh": options}, "", ["6"], nodes)
        store.set_status(poisoned[0], "running", event="started")
    finally:
        store.close()
    imaging_mesh.restart("orchestrator")
    job = imaging_mesh.wait(imaging_mesh.submit(pipeline("after-restart")), timeout=60)
    assert job["status"] == "completed", job
    for job_id in poisoned:
        failed = imaging_mesh.wait(job_id, timeout=10)
        assert failed["status"] == "failed" and failed["error"]["type"] == "invalid_options", failed
        assert "submit it again" in failed["error"]["message"]
        events = imaging_mesh.events(f"/v1/jobs/{job_id}/events")
        assert events[-1]["event"] == "failed" and events[-1]["data"]["type"] == "invalid_options"
    assert sum("could not be prepared" in line for line in imaging_mesh.logs) >= len(poisoned)
