"""An upscale graph through real gRPC stages: LoadImage (imaging) → UpscaleModelLoader /
ImageUpscaleWithModel (diffusion, a tiny ESRGAN .pth read tensors-only) → SaveImage."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from comfymesh.diffusion.models.upscale import load_upscale_model, make_tiny_esrgan
from tests.mesh import Mesh

MODEL = "tiny_esrgan_x2.pth"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("vision-home")
    mesh = Mesh(home, stages=("imaging", "diffusion"))
    make_tiny_esrgan(home / "models" / "upscale_models" / MODEL, scale=2, blocks=2, seed=7)
    pixels = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(home / "input" / "small.png")
    try:
        yield mesh.start()
    finally:
        mesh.stop()


def upscale_prompt() -> dict[str, Any]:
    return {"1": {"class_type": "LoadImage", "inputs": {"image": "small.png"}},
            "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": MODEL}},
            "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
            "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "upscaled"}}}


def test_an_upscale_graph_runs_through_the_stages(mesh: Mesh) -> None:
    # the .pth file is listed (the upscale_models folder reads pickles, tensors only)
    entry = mesh.http.get("/object_info/UpscaleModelLoader").json()["UpscaleModelLoader"]
    kind, options = entry["input"]["required"]["model_name"]  # ComfyUI 0.8.0's V3 combo form
    assert kind == "COMBO" and options["options"] == [MODEL]
    job = mesh.wait(mesh.submit(upscale_prompt()), timeout=300)
    assert job["status"] == "completed", job["error"]
    png = mesh.http.get(f"/v1/jobs/{job['job_id']}/output", params={"index": 0}).content
    served = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
    assert served.shape == (48, 80, 3)
    # the same model run here on the same pixels, as SaveImage quantises
    source = torch.from_numpy(np.asarray(Image.open(mesh.home / "input" / "small.png"))).float()[None] / 255.0
    model = load_upscale_model(mesh.home / "models" / "upscale_models" / MODEL)
    with torch.no_grad():
        expected = torch.clamp(model(source.movedim(-1, 1)), 0, 1).movedim(1, -1)[0].numpy()
    assert np.abs(served - np.clip(expected * 255.0, 0, 255).round()).max() <= 1


def test_a_missing_upscale_model_lists_what_exists(mesh: Mesh) -> None:
    prompt = upscale_prompt()
    prompt["2"]["inputs"]["model_name"] = "nope.pth"
    reply = mesh.http.post("/v1/workflows", json={"prompt": prompt})
    assert reply.status_code == 400
    error = reply.json()["node_errors"]["2"]["errors"][0]
    assert error["type"] == "value_not_in_list" and MODEL in error["details"]
