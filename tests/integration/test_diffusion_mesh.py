"""The shared sample workflows through the whole mesh with tiny random-weight checkpoints on CPU."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.mesh import SHARED, Mesh

CHECKPOINTS = {"sd15.safetensors": "sd15", "sdxl.safetensors": "sdxl"}
# a checkpoint only in a folder that an extra_model_paths.yaml (ComfyUI's format) names, outside the data root
EXTRA_CHECKPOINT = "elsewhere/extra_sd15.safetensors"
ALL_CHECKPOINTS = sorted([*CHECKPOINTS, EXTRA_CHECKPOINT])


def tiny_checkpoint(family: str, path: Path) -> None:
    subprocess.run([sys.executable, "-m", "comfymesh.diffusion.models.tiny_checkpoint", "--family", family,
                    "--seed", "1", str(path)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("diffusion-home")
    models = tmp_path_factory.mktemp("my-comfyui") / "models"
    tiny_checkpoint("sd15", models / "checkpoints" / EXTRA_CHECKPOINT)
    extra_paths = models.parent / "extra_model_paths.yaml"
    extra_paths.write_text("my_comfyui:\n  base_path: models\n  checkpoints: checkpoints\n")
    mesh = Mesh(home, stages=("imaging", "diffusion"), diffusion_replicas=2,
                env={"COMFYMESH_EXTRA_MODEL_PATHS": str(extra_paths)})
    for name, family in CHECKPOINTS.items():
        tiny_checkpoint(family, home / "models" / "checkpoints" / name)
    shutil.copy(SHARED / "data" / "coffee.png", home / "input" / "example.png")
    try:
        yield mesh.start()
    finally:
        mesh.stop()


def small(name: str) -> dict[str, Any]:
    """A sample workflow at a CPU-friendly size (sizes scaled down 8x, a few steps); the graph is unchanged."""
    prompt = json.loads((SHARED / "workflows" / f"{name}.json").read_text())
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] in ("EmptyLatentImage", "ImageScale"):
            inputs["width"] //= 8
            inputs["height"] //= 8
        if node["class_type"] == "KSampler":
            inputs["steps"] = min(inputs["steps"], 3)
    return prompt


def sizes(mesh: Mesh, job: dict[str, Any]) -> list[tuple[int, int]]:
    return [Image.open(io.BytesIO(mesh.http.get(f"/v1/jobs/{job['job_id']}/output",
                                                params={"index": i}).content)).size
            for i in range(len(job["images"]))]


def run(mesh: Mesh, prompt: dict[str, Any]) -> dict[str, Any]:
    job = mesh.wait(mesh.submit(prompt), timeout=300)
    assert job["status"] == "completed", job["error"]
    return job


def test_txt2img_sd15(mesh: Mesh) -> None:
    job = run(mesh, small("txt2img_sd15"))
    assert sizes(mesh, job) == [(64, 64)]


def test_img2img_sd15(mesh: Mesh) -> None:
    job = run(mesh, small("img2img_sd15"))
    assert sizes(mesh, job) == [(64, 64)]


def test_hires_fix_mixes_diffusion_and_imaging(mesh: Mesh) -> None:
    job = run(mesh, small("hires_fix_branches_sd15"))
    # batch of 2: hires (64 * 1.5) and thumbnails (64 * 0.5), saved by different stages
    assert sizes(mesh, job) == [(96, 96), (96, 96), (32, 32), (32, 32)]
    stages_by_prefix = {image["filename"].split("_")[0] for image in job["images"]}
    assert stages_by_prefix == {"hires", "thumb"}


def test_txt2img_sdxl(mesh: Mesh) -> None:
    job = run(mesh, small("txt2img_sdxl"))
    assert sizes(mesh, job) == [(128, 128)]


def test_rerun_without_cache_gives_identical_bytes(mesh: Mesh) -> None:
    prompt = small("txt2img_sd15")
    prompt["9"]["inputs"]["filename_prefix"] = "determinism"
    first = mesh.http.get(f"/v1/jobs/{run(mesh, prompt)['job_id']}/output").content
    # forget every cached node output so the second run recomputes everything
    mesh.forget_cache()
    second_job = run(mesh, prompt)
    events = mesh.events(f"/v1/jobs/{second_job['job_id']}/events")
    assert {"3", "4", "8"} <= {e["data"]["node_id"] for e in events if e["event"] == "node_running"}
    second = mesh.http.get(f"/v1/jobs/{second_job['job_id']}/output").content
    assert first == second


def test_progress_reaches_sse_subscribers(mesh: Mesh) -> None:
    prompt = small("txt2img_sd15")
    prompt["3"]["inputs"]["seed"] = 99
    job_id = mesh.submit(prompt)
    events = mesh.events(f"/v1/jobs/{job_id}/events")
    progress = [(e["data"]["value"], e["data"]["max"]) for e in events if e["event"] == "node_progress"]
    assert progress == [(1, 3), (2, 3), (3, 3)]
    # a new seed reuses the checkpoint load and text encodes
    cached = [e for e in events if e["event"] == "cached"]
    assert cached and {"4", "6", "7"} <= set(cached[0]["data"]["nodes"])


def test_missing_checkpoint_lists_what_exists(mesh: Mesh) -> None:
    prompt = small("txt2img_sd15")
    prompt["4"]["inputs"]["ckpt_name"] = "nope.safetensors"
    reply = mesh.http.post("/v1/workflows", json={"prompt": prompt})
    assert reply.status_code == 400
    error = reply.json()["node_errors"]["4"]["errors"][0]
    assert error["type"] == "value_not_in_list"
    assert "nope.safetensors" in error["details"] and "sd15.safetensors" in error["details"]


def test_checkpoints_endpoint_gives_size_and_digest(mesh: Mesh) -> None:
    import hashlib

    listing = mesh.http.get("/v1/checkpoints").json()["checkpoints"]
    assert [c["name"] for c in listing] == ALL_CHECKPOINTS
    path = mesh.home / "models" / "checkpoints" / "sd15.safetensors"
    entry = next(c for c in listing if c["name"] == "sd15.safetensors")
    assert entry["size"] == path.stat().st_size
    assert entry["digest"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_checkpoint_in_an_extra_model_path_is_listed_and_loads(mesh: Mesh) -> None:
    info = mesh.http.get("/object_info/CheckpointLoaderSimple").json()
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == ALL_CHECKPOINTS
    prompt = small("txt2img_sd15")
    prompt["4"]["inputs"]["ckpt_name"] = EXTRA_CHECKPOINT
    job = run(mesh, prompt)
    assert sizes(mesh, job) == [(64, 64)]


def replicas_that_ran(mesh: Mesh, job_id: str) -> set[str]:
    return {line.split(":", 1)[0] for line in mesh.logs if '"RunStage"' in line and job_id in line}


def test_jobs_go_to_the_replica_that_holds_their_model(mesh: Mesh) -> None:
    """Free replicas take turns; a job whose checkpoint one replica holds goes there instead."""
    ran = []
    for family, seed in (("sd15", 1001), ("sdxl", 1002), ("sd15", 1003), ("sd15", 1004)):
        prompt = small("txt2img_sd15" if family == "sd15" else "txt2img_sdxl")
        prompt["3"]["inputs"]["seed"] = seed
        ran.append(replicas_that_ran(mesh, run(mesh, prompt)["job_id"]))
    sd15_holder = next(r for r, f in zip(ran, ("sd15", "sdxl", "sd15", "sd15"), strict=True) if f == "sd15")
    assert len(sd15_holder) == 1
    assert ran[2] == ran[3] == sd15_holder


def test_model_runner_lists_loads_and_unloads(mesh: Mesh) -> None:
    import asyncio

    import grpc

    from comfymesh.v1 import model_runner_pb2, model_runner_pb2_grpc

    async def session() -> tuple[Any, ...]:
        address = mesh.env["COMFYMESH_DIFFUSION_REPLICAS"].split(",")[1]
        async with grpc.aio.insecure_channel(address) as channel:
            stub = model_runner_pb2_grpc.ModelRunnerStub(channel)
            await stub.UnloadModel(model_runner_pb2.UnloadModelRequest())
            empty = await stub.ListModels(model_runner_pb2.ListModelsRequest())
            loaded = await stub.LoadModel(model_runner_pb2.LoadModelRequest(name="sd15.safetensors"))
            listed = await stub.ListModels(model_runner_pb2.ListModelsRequest())
            try:
                await stub.LoadModel(model_runner_pb2.LoadModelRequest(name="missing.safetensors"))
                missing = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                missing = exc.code()
            return empty, loaded, listed, missing

    empty, loaded, listed, missing = asyncio.run(session())
    assert not any(m.loaded for m in empty.models)
    assert sorted(m.name for m in empty.models) == ALL_CHECKPOINTS
    assert loaded.loaded and loaded.family and len(loaded.digest) == 64 and loaded.bytes > 0
    resident = [m for m in listed.models if m.loaded]
    assert [m.name for m in resident] == ["sd15.safetensors"] and listed.memory_used_bytes > 0
    assert listed.device == "cpu" and listed.device_total_bytes > 0
    assert missing == grpc.StatusCode.NOT_FOUND


def pixels_by_prefix(mesh: Mesh, job: dict[str, Any]) -> dict[str, bytes]:
    return {image["filename"].split("_")[0]: Image.open(io.BytesIO(mesh.http.get(
        f"/v1/jobs/{job['job_id']}/output", params={"index": i}).content)).tobytes()
        for i, image in enumerate(job["images"])}


def test_custom_sampling_txt2img_reproduces_ksampler(mesh: Mesh) -> None:
    """KSamplerSelect + RandomNoise + BasicScheduler + CFGGuider → SamplerCustomAdvanced, sent to /prompt as a
    client would: its SIGMAS, GUIDER, SAMPLER and NOISE values are stored for the cache like any output."""
    ksampler = small("txt2img_sd15")
    ksampler["9"]["inputs"]["filename_prefix"] = "ksampler"
    seed, steps = ksampler["3"]["inputs"]["seed"], ksampler["3"]["inputs"]["steps"]
    custom = small("txt2img_sd15")
    custom.update({
        "10": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "11": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
        "12": {"class_type": "BasicScheduler", "inputs": {"model": ["4", 0], "scheduler": "normal", "steps": steps,
                                                          "denoise": 1.0}},
        "13": {"class_type": "CFGGuider", "inputs": {"model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                                                     "cfg": 8.0}},
        "3": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["11", 0], "guider": ["13", 0],
                                                                "sampler": ["10", 0], "sigmas": ["12", 0],
                                                                "latent_image": ["5", 0]}},
        "14": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 1], "vae": ["4", 2]}},
        "15": {"class_type": "SaveImage", "inputs": {"images": ["14", 0], "filename_prefix": "denoised"}},
    })
    custom["9"]["inputs"]["filename_prefix"] = "custom"
    reply = mesh.http.post("/prompt", json={"prompt": custom})
    assert reply.status_code == 200, reply.text
    job = mesh.wait(reply.json()["prompt_id"], timeout=300)
    assert job["status"] == "completed", job["error"]
    images = pixels_by_prefix(mesh, job)
    assert set(images) == {"custom", "denoised"}
    assert images["custom"] == pixels_by_prefix(mesh, run(mesh, ksampler))["ksampler"]
