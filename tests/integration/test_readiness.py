"""/readyz per stage on a real mesh: ready only while every configured stage has a healthy replica."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.mesh import Mesh


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    started = Mesh(Path(tmp_path_factory.mktemp("readiness")), stages=("imaging", "diffusion"),
                   imaging_replicas=2).start()
    yield started
    started.stop()


def readiness_until(mesh: Mesh, status_code: int, stage: str = "", healthy: int = 0,
                    timeout: float = 15.0) -> dict[str, Any]:
    """Poll /readyz until it answers `status_code` (and `stage` has `healthy` replicas, when named): a killed
    process's channel notices within moments, a restarted one is reconnected within the 2 s backoff cap."""
    deadline = time.monotonic() + timeout
    while True:
        reply = mesh.http.get("/readyz")
        body = reply.json()
        if reply.status_code == status_code and (not stage or body["stages"][stage]["healthy"] == healthy):
            return dict(body)
        assert time.monotonic() < deadline, reply.text
        time.sleep(0.1)


def test_ready_with_every_stage_healthy(mesh: Mesh) -> None:
    body = readiness_until(mesh, 200)
    assert body == {"status": "ready", "missing": [],
                    "stages": {"imaging": {"replicas": 2, "healthy": 2}, "diffusion": {"replicas": 1, "healthy": 1}}}
    assert mesh.http.get("/api/v2/health").json() == {"status": "healthy", "orchestrator": "ready"}


def test_a_stage_down_is_named_and_ready_again_once_back(mesh: Mesh) -> None:
    mesh.kill("imaging0")  # one replica of two: the stage still serves
    assert readiness_until(mesh, 200, "imaging", 1)["stages"]["imaging"] == {"replicas": 2, "healthy": 1}

    mesh.kill("diffusion")  # the stage's only replica
    body = readiness_until(mesh, 503)
    assert body["missing"] == ["diffusion"]
    assert "diffusion" in body["status"] and "imaging" not in body["status"]
    assert body["stages"]["diffusion"] == {"replicas": 1, "healthy": 0}
    health = mesh.http.get("/api/v2/health")
    assert health.status_code == 503
    assert "degraded" in health.text  # in v2's error envelope

    mesh.restart("diffusion")
    assert readiness_until(mesh, 200)["stages"]["diffusion"] == {"replicas": 1, "healthy": 1}
    mesh.restart("imaging0")
    readiness_until(mesh, 200, "imaging", 2)


def test_orchestrator_down_is_not_ready(mesh: Mesh) -> None:
    mesh.kill("orchestrator")
    assert readiness_until(mesh, 503) == {"status": "orchestrator unavailable", "missing": [], "stages": {}}
    mesh.restart("orchestrator")
    assert readiness_until(mesh, 200)["status"] == "ready"
