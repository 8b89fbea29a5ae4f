"""Prompts far deeper or bigger than usual get an answer, never a 500: a chain of thousands of nodes runs (the
graph walks were recursive: 494 nodes raised RecursionError), and one the control plane cannot carry is
refused at submit with a 4xx instead of failing its stage call and every read of the job."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.mesh import Mesh
from tests.unit.test_graph import chain

PRODUCTION_BOUND = 4 * 1024 * 1024  # the default COMFYMESH_GRPC_MAX_MESSAGE_BYTES (other tests run with 64 KiB)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("home"), env={"COMFYMESH_GRPC_MAX_MESSAGE_BYTES": str(PRODUCTION_BOUND)})
    try:
        yield mesh.start()
    finally:
        mesh.stop()


def test_a_chain_of_3000_nodes_runs(mesh: Mesh) -> None:
    job_id = mesh.submit(chain(3000))
    job = mesh.wait(job_id, timeout=300)
    assert job["status"] == "completed", job["error"]
    assert len(job["nodes"]) == 3002 and {node["state"] for node in job["nodes"]} == {"done"}
    assert mesh.http.get(f"/history/{job_id}").status_code == 200
    reply = mesh.http.post("/prompt", json={"prompt": chain(3000)})  # ComfyUI's route too
    assert reply.status_code == 200, reply.text
    assert mesh.wait(reply.json()["prompt_id"], timeout=300)["status"] == "completed"


@pytest.mark.parametrize(("length", "status"), [(30_000, 400), (70_000, 413)])
@pytest.mark.parametrize("path", ["/v1/workflows", "/prompt"])
def test_a_prompt_the_control_plane_cannot_carry_is_refused_at_submit(mesh: Mesh, path: str, length: int,
                                                                       status: int) -> None:
    # 30,000 nodes (2 MB): past a third of the bound, refused by the orchestrator; 70,000 (4.6 MB): the gateway's
    before = mesh.http.get("/v1/jobs", params={"limit": 1}).json()["total"]
    reply = mesh.http.post(path, json={"prompt": chain(length)})
    assert reply.status_code == status, reply.text
    if status == 400:
        body = reply.json()
        assert (body["code"] if path.startswith("/v1/") else body["error"]["type"]) == "prompt_too_large"
    assert mesh.http.get("/v1/jobs", params={"limit": 1}).json()["total"] == before
