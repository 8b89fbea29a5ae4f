"""FLUX.2 Klein through the mesh in the shape of the official image_flux2_klein_image_edit_4b_distilled template
with one reference image: UNETLoader, CLIPLoader `flux2` (Qwen3), VAELoader (the FLUX.2 VAE), LoadImage →
ImageScaleToTotalPixels → GetImageSize sizing EmptyFlux2LatentImage and Flux2Scheduler, VAEEncode → ReferenceLatent
on the prompt and on its ConditioningZeroOut, CFGGuider cfg 1, SamplerCustomAdvanced euler, VAEDecode. Tiny
random-weight files in ComfyUI's layouts under the template's file names."""

from __future__ import annotations

import copy
import io
import shutil
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from comfymesh.diffusion.models.tiny_flux2 import make_template_files
from tests.mesh import SHARED, Mesh, assert_reruns_identically

PHOTO = "handbag_white.png"
EDIT_GRAPH: dict[str, Any] = {
    "9": {"inputs": {"filename_prefix": "Flux2", "images": ["65", 0]}, "class_type": "SaveImage"},
    "70": {"inputs": {"unet_name": "flux-2-klein-4b.safetensors", "weight_dtype": "default"},
           "class_type": "UNETLoader"},
    "71": {"inputs": {"clip_name": "qwen_3_4b.safetensors", "type": "flux2", "device": "default"},
           "class_type": "CLIPLoader"},
    "72": {"inputs": {"vae_name": "flux2-vae.safetensors"}, "class_type": "VAELoader"},
    "76": {"inputs": {"image": PHOTO}, "class_type": "LoadImage"},
    "80": {"inputs": {"image": ["76", 0], "upscale_method": "nearest-exact", "megapixels": 0.01,
                      "resolution_steps": 1}, "class_type": "ImageScaleToTotalPixels"},
    "99": {"inputs": {"image": ["80", 0]}, "class_type": "GetImageSize"},
    "66": {"inputs": {"width": ["99", 0], "height": ["99", 1], "batch_size": 1}, "class_type": "EmptyFlux2LatentImage"},
    "62": {"inputs": {"steps": 2, "width": ["99", 0], "height": ["99", 1]}, "class_type": "Flux2Scheduler"},
    "74": {"inputs": {"text": "Change the bag color to blue.", "clip": ["71", 0]}, "class_type": "CLIPTextEncode"},
    "82": {"inputs": {"conditioning": ["74", 0]}, "class_type": "ConditioningZeroOut"},
    "122": {"inputs": {"pixels": ["80", 0], "vae": ["72", 0]}, "class_type": "VAEEncode"},
    "121": {"inputs": {"conditioning": ["74", 0], "latent": ["122", 0]}, "class_type": "ReferenceLatent"},
    "123": {"inputs": {"conditioning": ["82", 0], "latent": ["122", 0]}, "class_type": "ReferenceLatent"},
    "63": {"inputs": {"cfg": 1, "model": ["70", 0], "positive": ["121", 0], "negative": ["123", 0]},
           "class_type": "CFGGuider"},
    "61": {"inputs": {"sampler_name": "euler"}, "class_type": "KSamplerSelect"},
    "73": {"inputs": {"noise_seed": 43}, "class_type": "RandomNoise"},
    "64": {"inputs": {"noise": ["73", 0], "guider": ["63", 0], "sampler": ["61", 0], "sigmas": ["62", 0],
                      "latent_image": ["66", 0]}, "class_type": "SamplerCustomAdvanced"},
    "65": {"inputs": {"samples": ["64", 0], "vae": ["72", 0]}, "class_type": "VAEDecode"},
}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("flux2-home")
    make_template_files(home / "models", seed=3)
    mesh = Mesh(home, stages=("imaging", "diffusion"))
    shutil.copy(SHARED / "data" / "coffee.png", home / "input" / PHOTO)
    try:
        yield mesh.start()
    finally:
        mesh.stop()


def test_klein_edit_with_one_reference_reruns_identically(mesh: Mesh) -> None:
    first = assert_reruns_identically(mesh, EDIT_GRAPH)
    image = np.asarray(Image.open(io.BytesIO(first)))
    assert image.shape[2] == 3 and image.shape[0] % 16 == 0 and image.shape[1] % 16 == 0
    assert image.std() > 0  # a decoded picture, not a constant frame


def test_the_reference_changes_the_image(mesh: Mesh) -> None:
    without = copy.deepcopy(EDIT_GRAPH)
    without["63"]["inputs"]["positive"] = ["74", 0]
    without["63"]["inputs"]["negative"] = ["82", 0]
    assert mesh.run_output(without) != mesh.run_output(EDIT_GRAPH)


def test_fp8_file_and_the_small_decoder_vae_run(mesh: Mesh) -> None:
    prompt = copy.deepcopy(EDIT_GRAPH)
    prompt["70"]["inputs"]["unet_name"] = "flux-2-klein-4b-fp8.safetensors"
    prompt["72"]["inputs"]["vae_name"] = "full_encoder_small_decoder.safetensors"
    image = np.asarray(Image.open(io.BytesIO(mesh.run_output(prompt))))
    assert image.std() > 0


def test_an_encoder_of_another_width_is_refused(mesh: Mesh) -> None:
    prompt = copy.deepcopy(EDIT_GRAPH)
    prompt["71"]["inputs"]["clip_name"] = "qwen_3_4b.safetensors"
    prompt["71"]["inputs"]["type"] = "lumina2"  # Z-Image's encoder: its 64-wide context does not fit Klein's 192
    job = mesh.wait(mesh.submit(prompt), timeout=120)
    assert job["status"] == "failed"
    assert "192" in str(job["error"])
