"""The walking mesh: gateway -> orchestrator -> imaging stage, real processes on loopback."""

from __future__ import annotations

import io
import json
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from tests.mesh import SHARED, Mesh

CONVERT = "/usr/bin/convert"


def load_workflow(name: str) -> dict:
    return json.loads((SHARED / "workflows" / f"{name}.json").read_text())


def png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64) / 255.0


def test_imaging_pipeline_runs_and_streams_every_step(imaging_mesh: Mesh) -> None:
    job_id = imaging_mesh.submit(load_workflow("imaging_pipeline"))
    events = imaging_mesh.events(f"/v1/jobs/{job_id}/events")
    kinds = [e["event"] for e in events]
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert kinds[0] == "queued" and kinds[1] == "started" and kinds[-1] == "completed"
    for node_id in ("1", "2", "3", "4", "5", "6"):
        node_events = [e["event"] for e in events if e["data"]["node_id"] == node_id]
        assert node_events == ["node_running", "node_done"], (node_id, node_events)

    # reconnecting with Last-Event-ID replays only what was missed
    replay = imaging_mesh.events(f"/v1/jobs/{job_id}/events", last_event_id=ids[3])
    assert [e["id"] for e in replay] == ids[4:]

    output = imaging_mesh.http.get(f"/v1/jobs/{job_id}/output")
    assert output.status_code == 200 and output.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(output.content)).size == (256, 256)
    job = imaging_mesh.http.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "completed"
    assert {n["state"] for n in job["nodes"]} == {"done"}
    assert job["images"][0]["filename"].startswith("imaging_")


def _convert(*args: str) -> np.ndarray:
    if shutil.which(CONVERT) is None or "ImageMagick" not in subprocess.run(
            [CONVERT, "-version"], capture_output=True, text=True).stdout:
        pytest.fail(f"{CONVERT} is not ImageMagick: run `make system-deps` (apt-get install imagemagick)")
    result = subprocess.run([CONVERT, *args, "png:-"], capture_output=True, check=True)
    return png_pixels(result.stdout)


@pytest.mark.parametrize(("node", "cli"), [
    ({"class_type": "ImageInvert", "inputs": {}}, ["-negate"]),
    ({"class_type": "ImageBlur", "inputs": {"blur_radius": 3, "sigma": 1.0}},
     ["-virtual-pixel", "mirror", "-gaussian-blur", "3x3"]),
    ({"class_type": "ImageCrop", "inputs": {"width": 200, "height": 120, "x": 40, "y": 64}},
     ["-crop", "200x120+40+64", "+repage"]),
    ({"class_type": "ImageScale", "inputs": {"upscale_method": "lanczos", "width": 300, "height": 200,
                                              "crop": "disabled"}},
     ["-filter", "Lanczos", "-resize", "300x200!"]),
])
def test_mesh_pixels_equal_imagemagick_cli(imaging_mesh: Mesh, node: dict, cli: list[str]) -> None:
    node["inputs"]["image"] = ["1", 0]
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}}, "2": node,
              "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "cli"}}}
    job = imaging_mesh.wait(imaging_mesh.submit(prompt))
    assert job["status"] == "completed", job
    ours = png_pixels(imaging_mesh.http.get(f"/v1/jobs/{job['job_id']}/output").content)
    theirs = _convert(str(SHARED / "data" / "astronaut.png"), *cli)
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1 / 255 + 1e-9


def test_independent_branches_run_concurrently(imaging_mesh: Mesh) -> None:
    heavy = {"upscale_method": "bicubic", "width": 1400, "height": 1400, "crop": "disabled"}
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], **heavy}},
        "3": {"class_type": "ImageBlur", "inputs": {"image": ["2", 0], "blur_radius": 31, "sigma": 3.0}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
        "5": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], **heavy, "width": 1300}},
        "6": {"class_type": "ImageBlur", "inputs": {"image": ["5", 0], "blur_radius": 31, "sigma": 3.0}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }
    job_id = imaging_mesh.submit(prompt)
    events = imaging_mesh.events(f"/v1/jobs/{job_id}/events")
    assert events[-1]["event"] == "completed", events[-1]
    first = {e["data"]["node_id"]: e["id"] for e in events if e["event"] == "node_running"}
    last = {e["data"]["node_id"]: e["id"] for e in events if e["event"] == "node_done"}
    # each branch started before the other one finished: they overlapped in time
    assert first["2"] < last["7"] and first["5"] < last["4"], events


def test_large_tensors_travel_by_reference_only(imaging_mesh: Mesh) -> None:
    """Every service runs with a 512 KiB gRPC message bound (tests/mesh.py); a 1024x1024 float image is 12 MiB."""
    assert int(imaging_mesh.env["COMFYMESH_GRPC_MAX_MESSAGE_BYTES"]) * 24 <= 1024 * 1024 * 3 * 4
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1,
                                                           "color": 0x336699}},
              "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
              "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "big"}}}
    job = imaging_mesh.wait(imaging_mesh.submit(prompt))
    assert job["status"] == "completed", job
    pixels = png_pixels(imaging_mesh.http.get(f"/v1/jobs/{job['job_id']}/output").content)
    assert pixels.shape == (1024, 1024, 3)
    assert np.allclose(pixels[0, 0], [1 - 0x33 / 255, 1 - 0x66 / 255, 1 - 0x99 / 255], atol=1.5 / 255)


def test_bound_is_enforced_on_the_wire(imaging_mesh: Mesh) -> None:
    """The bound is real: a stage request carrying an inline string 100 KB over it is refused by gRPC."""
    import asyncio

    import grpc

    from comfymesh.v1 import stage_pb2, stage_pb2_grpc

    async def call() -> grpc.StatusCode:
        address = imaging_mesh.env["COMFYMESH_IMAGING_REPLICAS"]
        async with grpc.aio.insecure_channel(address) as channel:
            stub = stage_pb2_grpc.StageStub(channel)
            over = int(imaging_mesh.env["COMFYMESH_GRPC_MAX_MESSAGE_BYTES"]) + 100_000
            request = stage_pb2.StageRequest(job_id="x", prompt_json="x" * over)
            try:
                async for _ in stub.RunStage(request):
                    pass
            except grpc.aio.AioRpcError as exc:
                return exc.code()
        return grpc.StatusCode.OK

    assert asyncio.run(call()) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_rerun_is_served_from_cache(imaging_mesh: Mesh) -> None:
    prompt = load_workflow("imaging_pipeline")
    prompt["6"]["inputs"]["filename_prefix"] = "cached"
    first = imaging_mesh.wait(imaging_mesh.submit(prompt))
    second_id = imaging_mesh.submit(prompt)
    events = imaging_mesh.events(f"/v1/jobs/{second_id}/events")
    cached = [e for e in events if e["event"] == "cached"]
    assert cached and sorted(cached[0]["data"]["nodes"]) == ["1", "2", "3", "4", "5", "6"]
    assert not [e for e in events if e["event"] == "node_running"]
    second = imaging_mesh.wait(second_id)
    assert second["outputs"] == first["outputs"]


def test_execute_stage_runs_one_request_directly(imaging_mesh: Mesh) -> None:
    """The orchestrator's ExecuteStage (for tools) forwards one group to a replica and streams its events."""
    import asyncio

    import grpc

    from comfymesh.artifacts import ArtifactStore, decode_value
    from comfymesh.v1 import orchestrator_pb2, orchestrator_pb2_grpc, stage_pb2

    request = stage_pb2.StageRequest(job_id="tool", group_id="g", export_node_ids=["2"])
    request.nodes.add(node_id="1", class_type="EmptyImage",
                      literal_inputs_json=json.dumps({"width": 8, "height": 4, "batch_size": 1, "color": 0xFF0000}))
    invert = request.nodes.add(node_id="2", class_type="ImageInvert")
    invert.links["image"].node_id = "1"

    async def call() -> list[stage_pb2.StageEvent]:
        async with grpc.aio.insecure_channel(imaging_mesh.env["COMFYMESH_ORCHESTRATOR"]) as channel:
            stub = orchestrator_pb2_grpc.OrchestratorStub(channel)
            stream = stub.ExecuteStage(orchestrator_pb2.ExecuteStageRequest(stage="imaging", request=request))
            return [event async for event in stream]

    events = asyncio.run(call())
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds == ["started", "done", "started", "done"]
    [image] = events[-1].done.outputs
    pixels = decode_value(image, ArtifactStore((imaging_mesh.home / "artifacts").as_uri()))
    assert pixels.shape == (1, 4, 8, 3) and np.allclose(pixels[0, 0, 0], [0.0, 1.0, 1.0])
