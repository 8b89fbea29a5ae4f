"""SD3.5 through the mesh with tiny random-weight files in ComfyUI's layouts: sd3.5_simple_example's graph
(CheckpointLoaderSimple on the scaled-fp8 all-in-one checkpoint under the template's file name, CLIPTextEncode
with an empty negative, EmptySD3LatentImage, KSampler euler / sgm_uniform / cfg 4, VAEDecode) and the split
form (UNETLoader → ModelSamplingSD3, DualCLIPLoader `sd3` with CLIP-L and CLIP-G, VAELoader), 64×64, 2 steps."""

from __future__ import annotations

import copy
import io
import sqlite3
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from comfymesh.diffusion.models import tiny_sd3
from tests.mesh import Mesh

# sd3.5_simple_example as the frontend posts it, at 64×64 and 2 steps
SIMPLE: dict[str, Any] = {
    "4": {"inputs": {"ckpt_name": tiny_sd3.CHECKPOINT}, "class_type": "CheckpointLoaderSimple"},
    "16": {"inputs": {"text": "a bottle with a pink and red galaxy inside it", "clip": ["4", 1]},
           "class_type": "CLIPTextEncode"},
    "40": {"inputs": {"text": "", "clip": ["4", 1]}, "class_type": "CLIPTextEncode"},
    "53": {"inputs": {"width": 64, "height": 64, "batch_size": 1}, "class_type": "EmptySD3LatentImage"},
    "3": {"inputs": {"seed": 585483408983215, "steps": 2, "cfg": 4.01, "sampler_name": "euler",
                     "scheduler": "sgm_uniform", "denoise": 1, "model": ["4", 0], "positive": ["16", 0],
                     "negative": ["40", 0], "latent_image": ["53", 0]}, "class_type": "KSampler"},
    "8": {"inputs": {"samples": ["3", 0], "vae": ["4", 2]}, "class_type": "VAEDecode"},
    "9": {"inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}, "class_type": "SaveImage"},
}

SPLIT: dict[str, Any] = {
    **{k: v for k, v in SIMPLE.items() if k not in ("4",)},
    "1": {"inputs": {"unet_name": tiny_sd3.DIFFUSION_MODEL, "weight_dtype": "default"}, "class_type": "UNETLoader"},
    "2": {"inputs": {"shift": 3.0, "model": ["1", 0]}, "class_type": "ModelSamplingSD3"},
    "5": {"inputs": {"clip_name1": tiny_sd3.CLIP_L, "clip_name2": tiny_sd3.CLIP_G, "type": "sd3",
                     "device": "default"}, "class_type": "DualCLIPLoader"},
    "6": {"inputs": {"vae_name": tiny_sd3.VAE}, "class_type": "VAELoader"},
}
SPLIT = copy.deepcopy(SPLIT)
SPLIT["16"]["inputs"]["clip"] = SPLIT["40"]["inputs"]["clip"] = ["5", 0]
SPLIT["3"]["inputs"]["model"] = ["2", 0]
SPLIT["8"]["inputs"]["vae"] = ["6", 0]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("sd3-home")
    tiny_sd3.make_tiny_sd3(home / "models", seed=3)
    mesh = Mesh(home, stages=("imaging", "diffusion"))
    try:
        yield mesh.start()
    finally:
        mesh.stop()


def run(mesh: Mesh, prompt: dict[str, Any]) -> bytes:
    job = mesh.wait(mesh.submit(prompt), timeout=300)
    assert job["status"] == "completed", job["error"]
    return bytes(mesh.http.get(f"/v1/jobs/{job['job_id']}/output").content)


def forget_cache(mesh: Mesh) -> None:
    with sqlite3.connect(mesh.home / "comfymesh.db") as db:
        db.execute("DELETE FROM node_cache")


def test_checkpoint_form_runs_and_reruns_identically(mesh: Mesh) -> None:
    first = run(mesh, SIMPLE)
    image = np.asarray(Image.open(io.BytesIO(first)))
    assert image.shape == (64, 64, 3)
    assert image.std() > 0
    forget_cache(mesh)
    assert run(mesh, SIMPLE) == first


def test_split_form_runs_and_shift_drives_it(mesh: Mesh) -> None:
    first = run(mesh, SPLIT)
    assert np.asarray(Image.open(io.BytesIO(first))).shape == (64, 64, 3)
    forget_cache(mesh)
    assert run(mesh, SPLIT) == first
    # the checkpoint's fp8 weights round the model: the split file's fp16 one gives other pixels
    assert first != run(mesh, SIMPLE)
    unshifted = copy.deepcopy(SPLIT)
    unshifted["2"]["inputs"]["shift"] = 1.0
    assert run(mesh, unshifted) != first
