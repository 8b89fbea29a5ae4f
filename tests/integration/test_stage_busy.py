"""A stage with no free slot answers busy instead of queueing; the orchestrator waits and retries without
counting it as a failed attempt. The slot is held by another caller, as a second orchestrator would."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from comfymesh.contracts import wirejson
from comfymesh.rpc import open_channel
from comfymesh.v1 import stage_pb2, stage_pb2_grpc
from tests.mesh import Mesh


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    # one slot, and a node class that hangs until its call is cancelled: the other caller's call
    mesh = Mesh(tmp_path_factory.mktemp("home"), env={"COMFYMESH_STAGE_SLOTS": "1",
                                                      "COMFYMESH_TEST_HANG_NODES": "SolidMask",
                                                      "COMFYMESH_MAX_ATTEMPTS": "1"})
    try:
        yield mesh.start()
    finally:
        mesh.stop()


def _busy_refusals(mesh: Mesh) -> int:
    return sum(1 for line in list(mesh.logs) if line.startswith("imaging0: ") and "busy: call refused" in line)


async def _job_while_the_slot_is_held(mesh: Mesh) -> str:
    """Hold the stage's one slot with a hanging call, submit a job, see it refused as busy, let go."""
    channel = open_channel(mesh.env["COMFYMESH_IMAGING_REPLICAS"], internal_secret="")
    request = stage_pb2.StageRequest(job_id="other-orchestrator", group_id="g", nodes=[stage_pb2.NodeCall(
        node_id="1", class_type="SolidMask", literal_inputs_json=wirejson.dumps(
            {"value": 1.0, "width": 8, "height": 8}))])
    try:
        call = stage_pb2_grpc.StageStub(channel).RunStage(request)
        first = await call.read()
        assert first.WhichOneof("event") == "started"
        # the mesh's job asks meanwhile: it is refused as busy, and keeps asking
        submitted = await asyncio.to_thread(mesh.submit, {
            "empty": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1,
                                                             "color": 0x123456}},
            "save": {"class_type": "SaveImage", "inputs": {"images": ["empty", 0], "filename_prefix": "busy"}}})
        deadline = time.monotonic() + 30
        while _busy_refusals(mesh) < 2:
            assert time.monotonic() < deadline, mesh.logs[-20:]
            await asyncio.sleep(0.05)
        assert (await asyncio.to_thread(mesh.http.get, f"/v1/jobs/{submitted}")).json()["status"] != "failed"
        call.cancel()  # the other caller lets go of the slot
        return submitted
    finally:
        await channel.close()


def test_a_busy_stage_is_waited_for_without_using_up_an_attempt(mesh: Mesh) -> None:
    job_id = asyncio.run(_job_while_the_slot_is_held(mesh))
    job = mesh.wait(job_id)
    assert job["status"] == "completed", job["error"]  # one attempt allowed, several busy answers
    assert not [e for e in mesh.events(f"/v1/jobs/{job_id}/events") if e["event"] == "retrying"]
