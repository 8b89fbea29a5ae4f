"""A model that cannot fit the diffusion stage's memory budget, through the mesh: the job fails at its loader,
before any sampling, with a non-retryable `model_too_large` error naming the model and the bytes it needs
against the budget (no attempt is retried)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from comfymesh.contracts.events import EventType
from comfymesh.diffusion.models import tiny_flux
from tests.integration.test_flux_mesh import DEV
from tests.mesh import Mesh

BUDGET = 2**20  # 1 MiB: the tiny FLUX files take 15 (diffusion model) and 23 MiB (text encoders) on the CPU


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("memory-home")
    tiny_flux.make_tiny_flux(home / "models", seed=3)
    mesh = Mesh(home, stages=("imaging", "diffusion"),
                env={"COMFYMESH_MODEL_CACHE_BYTES": str(BUDGET), "COMFYMESH_BLOCK_OFFLOAD": "false"})
    try:
        yield mesh.start()
    finally:
        mesh.stop()


def test_a_model_over_the_budget_fails_its_loader_without_retries(mesh: Mesh) -> None:
    job = mesh.wait(mesh.submit(DEV))
    assert job["status"] == "failed"
    error = job["error"]
    assert error["type"] == "model_too_large" and error["non_retryable"] is True
    # a loader (the text encoders' or the diffusion model's, whichever ran first) failed: nothing after it ran
    loaders = {"11": tiny_flux.T5, "12": tiny_flux.DIFFUSION_MODEL}
    assert loaders[error["node_id"]] in error["message"] and "budget is 1.0 MiB" in error["message"]
    events = [e["event"] for e in mesh.events(f"/v1/jobs/{job['job_id']}/events")]
    assert events[-1] == EventType.FAILED and EventType.RETRYING not in events
