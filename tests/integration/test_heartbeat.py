"""A stage that stalls past the heartbeat timeout fails its job naming the node it was on, closed as failed."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mesh import Mesh

HEARTBEAT_S = 3.0


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("home"), env={"COMFYMESH_HEARTBEAT_TIMEOUT_S": str(HEARTBEAT_S),
                                                      "COMFYMESH_MAX_ATTEMPTS": "2"})
    try:
        yield mesh.start()
    finally:
        mesh.stop()


def node_states(mesh: Mesh, job_id: str) -> dict[str, str]:
    return {node["node_id"]: node["state"] for node in mesh.http.get(f"/v1/jobs/{job_id}").json()["nodes"]}


def test_a_stalled_stage_fails_the_job_at_the_node_it_was_running(mesh: Mesh) -> None:
    # about half a second of blur: long enough to be seen running, far shorter than the heartbeat timeout
    prompt = {"empty": {"class_type": "EmptyImage",
                        "inputs": {"width": 1024, "height": 1024, "batch_size": 1, "color": 0x336699}},
              "blur": {"class_type": "ImageBlur", "inputs": {"image": ["empty", 0], "blur_radius": 5, "sigma": 1.0}},
              "save": {"class_type": "SaveImage", "inputs": {"images": ["blur", 0], "filename_prefix": "stall"}}}
    stage = mesh.service("imaging0").process
    job_id = mesh.submit(prompt)
    stopped = False
    try:
        deadline = time.monotonic() + 30
        while not (running := [node for node, state in node_states(mesh, job_id).items() if state == "running"]):
            assert time.monotonic() < deadline, node_states(mesh, job_id)
        os.kill(stage.pid, signal.SIGSTOP)  # the stage stalls mid-node: no event, no end of the call
        stopped = True
        job = mesh.wait(job_id, timeout=60)
    finally:
        if stopped:
            os.kill(stage.pid, signal.SIGCONT)
    assert job["status"] == "failed"
    error = job["error"]
    assert error["type"] == "timeout" and "heartbeat" in error["message"], error
    # the node the stage was on: the one seen running, or a later one if it finished meanwhile; never ""
    order = ["empty", "blur", "save"]
    assert error["node_id"] in order[order.index(running[0]):], (error, running)
    states = node_states(mesh, job_id)
    assert [states[node] for node in order] == [
        "done" if order.index(node) < order.index(error["node_id"]) else
        "failed" if node == error["node_id"] else "pending" for node in order], states


def test_the_stage_serves_again_once_it_resumes(mesh: Mesh, tmp_path: Path) -> None:
    prompt = {"empty": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
              "save": {"class_type": "SaveImage", "inputs": {"images": ["empty", 0], "filename_prefix": "after"}}}
    assert mesh.wait(mesh.submit(prompt))["status"] == "completed"
