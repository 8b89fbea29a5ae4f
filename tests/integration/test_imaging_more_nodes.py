"""ResizeImageMaskNode, BatchImagesNode and LoadImageOutput through the imaging mesh, with their V3 dynamic
inputs named as ComfyUI's frontend names them in a prompt (`resize_type.longer_size`, `images.image0`)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from tests.mesh import Mesh

TOLERANCE = 1 / 255


def saved_pixels(mesh: Mesh, prompt: dict[str, Any], node_id: str) -> list[np.ndarray]:
    reply = mesh.http.post("/prompt", json={"prompt": prompt})
    assert reply.status_code == 200, reply.text
    prompt_id = reply.json()["prompt_id"]
    job = mesh.wait(prompt_id)
    assert job["status"] == "completed", job["error"]
    images = mesh.http.get(f"/history/{prompt_id}").json()[prompt_id]["outputs"][node_id]["images"]
    return [np.asarray(Image.open(io.BytesIO(mesh.http.get("/view", params={
        "filename": image["filename"], "subfolder": image["subfolder"], "type": image["type"]}).content)))
        for image in images]


def test_resize_then_batch_with_an_output_folder_image(imaging_mesh: Mesh) -> None:
    # a 600x400 photo to its longer side 300 (300x200), batched with a 50x40 grey image from output/,
    # which is resized (bilinear, centre crop) to 300x200 and given no alpha (both RGB)
    Image.fromarray(np.full((40, 50, 3), 128, np.uint8)).save(imaging_mesh.home / "output" / "grey.png")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "coffee.png"}},
        "2": {"class_type": "ResizeImageMaskNode",
              "inputs": {"input": ["1", 0], "resize_type": "scale longer dimension",
                         "resize_type.longer_size": 300, "scale_method": "area"}},
        "3": {"class_type": "LoadImageOutput", "inputs": {"image": "grey.png [output]"}},
        "4": {"class_type": "BatchImagesNode", "inputs": {"images.image0": ["2", 0], "images.image1": ["3", 0]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "more"}},
    }
    first, second = saved_pixels(imaging_mesh, prompt, "5")
    assert first.shape == second.shape == (200, 300, 3)
    photo = np.asarray(Image.open(imaging_mesh.home / "input" / "coffee.png").convert("RGB"), np.float32)
    # area reduction by 2: the mean of each 2x2 block (ComfyUI's adaptive average pool)
    expected = photo.reshape(200, 2, 300, 2, 3).mean(axis=(1, 3))
    assert np.abs(first.astype(np.float32) - expected).max() <= 1.0 + TOLERANCE * 255
    assert (second == 128).all()


def test_a_bad_dynamic_input_is_refused_with_its_dotted_name(imaging_mesh: Mesh) -> None:
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "coffee.png"}},
        "2": {"class_type": "ResizeImageMaskNode",
              "inputs": {"input": ["1", 0], "resize_type": "scale by multiplier", "resize_type.multiplier": 9.0,
                         "scale_method": "area"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
        "4": {"class_type": "LoadImageOutput", "inputs": {"image": "nothing.png [output]"}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
    }
    reply = imaging_mesh.http.post("/prompt", json={"prompt": prompt})
    assert reply.status_code == 400
    errors = reply.json()["node_errors"]
    assert [(e["type"], e["extra_info"]["input_name"]) for e in errors["2"]["errors"]] == [
        ("value_bigger_than_max", "resize_type.multiplier")]
    assert errors["4"]["errors"][0]["type"] == "custom_validation_failed"
