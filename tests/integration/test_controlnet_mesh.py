"""A ControlNet graph through the whole mesh: LoadImage (imaging stage) → ControlNetLoader and
ControlNetApplyAdvanced → KSampler → VAEDecode (diffusion stage) → SaveImage, with a tiny random-weight SD1.5
checkpoint and a tiny ControlNet made for it, 32×32 in 2 steps on CPU.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from comfymesh.diffusion.models.tiny_controlnet import make_tiny_controlnet
from tests.mesh import SHARED, Mesh

CHECKPOINT = "sd15.safetensors"
CONTROLNET = "tiny_sd15_controlnet.safetensors"
SIZE = 32


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("controlnet-home")
    mesh = Mesh(home, stages=("imaging", "diffusion"))
    subprocess.run([sys.executable, "-m", "comfymesh.diffusion.models.tiny_checkpoint", "--family", "sd15",
                    str(home / "models" / "checkpoints" / CHECKPOINT)], check=True, capture_output=True)
    make_tiny_controlnet(home / "models" / "controlnet" / CONTROLNET, family="sd15")
    shutil.copy(SHARED / "data" / "coffee.png", home / "input" / "hint.png")
    try:
        yield mesh.start()
    finally:
        mesh.stop()


def graph(strength: float | None, prefix: str = "controlnet") -> dict[str, Any]:
    """txt2img at 32×32 in 2 steps; with `strength` not None, both conditionings go through the ControlNet."""
    prompt: dict[str, Any] = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cup of coffee", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 7, "steps": 2, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["8", 0]}},
    }
    if strength is not None:
        prompt |= {
            "10": {"class_type": "LoadImage", "inputs": {"image": "hint.png"}},
            "11": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": CONTROLNET}},
            "12": {"class_type": "ControlNetApplyAdvanced", "inputs": {
                "positive": ["6", 0], "negative": ["7", 0], "control_net": ["11", 0], "image": ["10", 0],
                "strength": strength, "start_percent": 0.0, "end_percent": 1.0}},
        }
        prompt["3"]["inputs"] |= {"positive": ["12", 0], "negative": ["12", 1]}
    return prompt


def run(mesh: Mesh, prompt: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    job = mesh.wait(mesh.submit(prompt), timeout=300)
    assert job["status"] == "completed", job["error"]
    assert len(job["images"]) == 1, job["images"]
    return job, mesh.http.get(f"/v1/jobs/{job['job_id']}/output").content


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def test_controlnet_graph_runs_and_reruns_to_the_same_bytes(mesh: Mesh) -> None:
    first_job, first = run(mesh, graph(1.0))
    assert Image.open(io.BytesIO(first)).size == (SIZE, SIZE)
    ran = {e["data"]["node_id"] for e in mesh.events(f"/v1/jobs/{first_job['job_id']}/events")
           if e["event"] == "node_running"}
    assert {"10", "11", "12", "3"} <= ran, ran
    # forget every cached node output so the rerun loads, applies and samples again
    mesh.forget_cache()
    second_job, second = run(mesh, graph(1.0))
    ran = {e["data"]["node_id"] for e in mesh.events(f"/v1/jobs/{second_job['job_id']}/events")
           if e["event"] == "node_running"}
    assert {"11", "12", "3", "8"} <= ran, ran
    assert first == second


def test_controlnet_steers_the_image_and_strength_zero_is_the_plain_graph(mesh: Mesh) -> None:
    _, plain = run(mesh, graph(None, prefix="plain"))
    _, zero = run(mesh, graph(0.0, prefix="plain"))
    _, full = run(mesh, graph(1.0, prefix="plain"))
    # the saved PNGs carry their own prompt, so the pixels are compared
    assert np.array_equal(pixels(zero), pixels(plain))
    # the random-weight ControlNet's residuals move the sampled latent: the image must change
    assert np.abs(pixels(full) - pixels(plain)).mean() > 1.0
