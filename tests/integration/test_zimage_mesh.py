"""The frontend's default graph (Z-Image Turbo: UNETLoader → ModelSamplingAuraFlow, CLIPLoader `lumina2`,
EmptySD3LatentImage, KSampler res_multistep cfg 1, VAELoader/VAEDecode) through the mesh, with tiny random-weight
files in ComfyUI's layouts under the graph's own file names."""

from __future__ import annotations

import copy
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from comfymesh.diffusion.models.tiny_zimage import make_tiny_zimage
from tests.mesh import Mesh, assert_reruns_identically

# the API prompt the 1.58.1 frontend posts for its default graph, at 64×64 and 2 steps
DEFAULT_GRAPH: dict[str, Any] = {
    "9": {"inputs": {"filename_prefix": "ComfyUI", "images": ["65", 0]}, "class_type": "SaveImage"},
    "62": {"inputs": {"clip_name": "qwen_3_4b.safetensors", "type": "lumina2", "device": "default"},
           "class_type": "CLIPLoader"},
    "63": {"inputs": {"vae_name": "ae.safetensors"}, "class_type": "VAELoader"},
    "65": {"inputs": {"samples": ["70", 0], "vae": ["63", 0]}, "class_type": "VAEDecode"},
    "66": {"inputs": {"unet_name": "z_image_turbo_bf16.safetensors", "weight_dtype": "default"},
           "class_type": "UNETLoader"},
    "67": {"inputs": {"text": "anime RPG game style, a knight in a misty forest", "clip": ["62", 0]},
           "class_type": "CLIPTextEncode"},
    "68": {"inputs": {"width": 64, "height": 64, "batch_size": 1}, "class_type": "EmptySD3LatentImage"},
    "69": {"inputs": {"shift": 3, "model": ["66", 0]}, "class_type": "ModelSamplingAuraFlow"},
    "70": {"inputs": {"seed": 42, "steps": 2, "cfg": 1, "sampler_name": "res_multistep", "scheduler": "simple",
                      "denoise": 1, "model": ["69", 0], "positive": ["67", 0], "negative": ["71", 0],
                      "latent_image": ["68", 0]}, "class_type": "KSampler"},
    "71": {"inputs": {"text": "low quality, bad anatomy", "clip": ["62", 0]}, "class_type": "CLIPTextEncode"},
}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("zimage-home")
    make_tiny_zimage(home / "models", seed=3)
    mesh = Mesh(home, stages=("imaging", "diffusion"))
    try:
        yield mesh.start()
    finally:
        mesh.stop()


def test_default_graph_runs_and_reruns_identically(mesh: Mesh) -> None:
    first = assert_reruns_identically(mesh, DEFAULT_GRAPH)
    image = np.asarray(Image.open(io.BytesIO(first)))
    assert image.shape == (64, 64, 3)
    assert image.std() > 0  # a decoded picture, not a constant frame


def test_shift_drives_the_flow_schedule(mesh: Mesh) -> None:
    base = mesh.run_output(DEFAULT_GRAPH)
    unshifted = copy.deepcopy(DEFAULT_GRAPH)
    unshifted["69"]["inputs"]["shift"] = 1.0
    assert mesh.run_output(unshifted) != base


def test_clip_type_must_fit_the_file(mesh: Mesh) -> None:
    prompt = copy.deepcopy(DEFAULT_GRAPH)
    prompt["62"]["inputs"]["type"] = "stable_diffusion"
    job = mesh.wait(mesh.submit(prompt), timeout=120)
    assert job["status"] == "failed"
    assert "qwen_3_4b.safetensors" in str(job["error"])
