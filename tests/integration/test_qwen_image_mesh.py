"""Qwen-Image through the mesh with tiny random-weight files in ComfyUI's layouts under the template's file
names: image_qwen_image's graph (UNETLoader → ModelSamplingAuraFlow 3.1, CLIPLoader `qwen_image` with a
Qwen2.5-VL file, CLIPTextEncode with an empty negative, EmptySD3LatentImage, KSampler euler / simple,
VAELoader with the Wan 2.1 VAE, VAEDecode, SaveImage), 64×64, 2 steps."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from comfymesh.diffusion.models import tiny_qwen_image
from tests.mesh import Mesh, assert_reruns_identically, png_pixels
from tests.qwen_image_graph import qwen_image_loaders

# image_qwen_image as the frontend posts it (its switches on the 20-step, cfg 4 branch), at 64×64 and 2 steps
TEMPLATE: dict[str, Any] = {
    **qwen_image_loaders(),
    "6": {"inputs": {"text": "A vibrant, warm neon-lit street scene in Hong Kong at the afternoon", "clip": ["38", 0]},
          "class_type": "CLIPTextEncode"},
    "7": {"inputs": {"text": "", "clip": ["38", 0]}, "class_type": "CLIPTextEncode"},
    "58": {"inputs": {"width": 64, "height": 64, "batch_size": 1}, "class_type": "EmptySD3LatentImage"},
    "3": {"inputs": {"seed": 50347169638278, "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "simple",
                     "denoise": 1, "model": ["66", 0], "positive": ["6", 0], "negative": ["7", 0],
                     "latent_image": ["58", 0]}, "class_type": "KSampler"},
    "8": {"inputs": {"samples": ["3", 0], "vae": ["39", 0]}, "class_type": "VAEDecode"},
    "60": {"inputs": {"filename_prefix": "Qwen-Image", "images": ["8", 0]}, "class_type": "SaveImage"},
}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("qwen-image-home")
    tiny_qwen_image.make_tiny_qwen_image(home / "models", seed=3)
    mesh = Mesh(home, stages=("imaging", "diffusion"))
    try:
        yield mesh.start()
    finally:
        mesh.stop()


def test_template_graph_runs_and_reruns_identically(mesh: Mesh) -> None:
    first = assert_reruns_identically(mesh, TEMPLATE)
    image = png_pixels(first)
    assert image.shape == (64, 64, 3)
    assert image.std() > 0  # a decoded picture, not a constant frame


def test_shift_and_prompt_reach_the_image(mesh: Mesh) -> None:
    base = mesh.run_output(TEMPLATE)
    unshifted = copy.deepcopy(TEMPLATE)
    unshifted["66"]["inputs"]["shift"] = 1.0
    assert mesh.run_output(unshifted) != base
    other = copy.deepcopy(TEMPLATE)
    other["6"]["inputs"]["text"] = "a quiet snowy village at dawn"
    assert mesh.run_output(other) != base


def test_default_flux_sampling_and_model_sampling_flux(mesh: Mesh) -> None:
    # without a ModelSampling node the model samples with ComfyUI's default (ModelSamplingFlux, μ 1.15)
    plain = copy.deepcopy(TEMPLATE)
    plain["3"]["inputs"]["model"] = ["37", 0]
    flux = copy.deepcopy(TEMPLATE)
    flux["66"] = {"inputs": {"max_shift": 1.15, "base_shift": 0.5, "width": 64, "height": 64, "model": ["37", 0]},
                  "class_type": "ModelSamplingFlux"}
    images = {mesh.run_output(plain), mesh.run_output(flux), mesh.run_output(TEMPLATE)}
    assert len(images) == 3


def test_clip_type_must_fit_the_file(mesh: Mesh) -> None:
    prompt = copy.deepcopy(TEMPLATE)
    prompt["38"]["inputs"]["type"] = "lumina2"
    job = mesh.wait(mesh.submit(prompt), timeout=120)
    assert job["status"] == "failed"
    assert tiny_qwen_image.TEXT_ENCODER in str(job["error"])


# image_qwen_image_edit's graph: the image scaled by the encoders for Qwen2.5-VL's vision tower and as the
# reference latent, VAEEncode'd (5-D, as ComfyUI's Wan VAE makes it) as the latent sampled from, CFGNorm, cfg 2.5
EDIT: dict[str, Any] = {
    **{k: v for k, v in TEMPLATE.items() if k in ("37", "38", "39", "66", "8", "60")},
    "78": {"inputs": {"image": "edit_input.png"}, "class_type": "LoadImage"},
    "88": {"inputs": {"pixels": ["78", 0], "vae": ["39", 0]}, "class_type": "VAEEncode"},
    "76": {"inputs": {"prompt": "Remove all UI text elements from the image", "clip": ["38", 0], "vae": ["39", 0],
                      "image": ["78", 0]}, "class_type": "TextEncodeQwenImageEdit"},
    "77": {"inputs": {"prompt": "", "clip": ["38", 0], "vae": ["39", 0], "image": ["78", 0]},
           "class_type": "TextEncodeQwenImageEdit"},
    "75": {"inputs": {"strength": 1.0, "model": ["66", 0]}, "class_type": "CFGNorm"},
    "3": {"inputs": {"seed": 344147753686358, "steps": 2, "cfg": 2.5, "sampler_name": "euler", "scheduler": "simple",
                     "denoise": 1, "model": ["75", 0], "positive": ["76", 0], "negative": ["77", 0],
                     "latent_image": ["88", 0]}, "class_type": "KSampler"},
}

# image_qwen_image_edit_2511's graph: two images through TextEncodeQwenImageEditPlus on a 2511 model (its
# timestep-zero reference method set explicitly, as the template does), cfg 4
EDIT_2511 = "qwen_image_edit_2511_fp8mixed.safetensors"
EDIT_PLUS: dict[str, Any] = {
    **{k: v for k, v in EDIT.items() if k in ("38", "39", "8", "60", "88")},
    "37": {"inputs": {"unet_name": EDIT_2511, "weight_dtype": "default"}, "class_type": "UNETLoader"},
    "66": {"inputs": {"shift": 3.1, "model": ["37", 0]}, "class_type": "ModelSamplingAuraFlow"},
    "75": {"inputs": {"strength": 1.0, "model": ["66", 0]}, "class_type": "CFGNorm"},
    "78": {"inputs": {"image": "edit_input.png"}, "class_type": "LoadImage"},
    "83": {"inputs": {"image": "edit_texture.png"}, "class_type": "LoadImage"},
    "151": {"inputs": {"prompt": "Change the leather in image 1 to the fur in image 2", "clip": ["38", 0],
                       "vae": ["39", 0], "image1": ["78", 0], "image2": ["83", 0]},
            "class_type": "TextEncodeQwenImageEditPlus"},
    "149": {"inputs": {"prompt": "", "clip": ["38", 0], "vae": ["39", 0], "image1": ["78", 0], "image2": ["83", 0]},
            "class_type": "TextEncodeQwenImageEditPlus"},
    "148": {"inputs": {"conditioning": ["151", 0], "reference_latents_method": "index_timestep_zero"},
            "class_type": "FluxKontextMultiReferenceLatentMethod"},
    "147": {"inputs": {"conditioning": ["149", 0], "reference_latents_method": "index_timestep_zero"},
            "class_type": "FluxKontextMultiReferenceLatentMethod"},
    "3": {"inputs": {"seed": 677909188488042, "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "simple",
                     "denoise": 1, "model": ["75", 0], "positive": ["148", 0], "negative": ["147", 0],
                     "latent_image": ["88", 0]}, "class_type": "KSampler"},
}


@pytest.fixture(scope="module")
def edit_inputs(mesh: Mesh) -> list[str]:
    rng = np.random.default_rng(7)
    names = ["edit_input.png", "edit_texture.png", "edit_other.png"]
    for name in names:
        Image.fromarray((rng.random((64, 48, 3)) * 255).astype(np.uint8)).save(mesh.home / "input" / name)
    tiny_qwen_image.make_tiny_qwen_image(mesh.home / "models", seed=3, variant="2511", name=EDIT_2511)
    return names


def test_edit_graph_runs_and_reruns_identically(mesh: Mesh, edit_inputs: list[str]) -> None:
    first = assert_reruns_identically(mesh, EDIT)
    image = png_pixels(first)
    assert image.shape == (64, 48, 3)
    # the encoders' image reaches the result (another picture in the encoders only)
    other = copy.deepcopy(EDIT)
    other["79"] = {"inputs": {"image": "edit_other.png"}, "class_type": "LoadImage"}
    other["76"]["inputs"]["image"] = other["77"]["inputs"]["image"] = ["79", 0]
    assert mesh.run_output(other) != first


def test_edit_plus_with_two_images_on_2511(mesh: Mesh, edit_inputs: list[str]) -> None:
    first = assert_reruns_identically(mesh, EDIT_PLUS)
    assert png_pixels(first).shape == (64, 48, 3)
    swapped = copy.deepcopy(EDIT_PLUS)
    for node in ("151", "149"):
        swapped[node]["inputs"]["image1"], swapped[node]["inputs"]["image2"] = ["83", 0], ["78", 0]
    assert mesh.run_output(swapped) != first
