"""FLUX.1 through the mesh with tiny random-weight files in ComfyUI's layouts under the templates' file names,
64×64, 2 steps: the dev graph on the custom sampler (UNETLoader → ModelSamplingFlux, DualCLIPLoader `flux`,
CLIPTextEncode → FluxGuidance → BasicGuider, RandomNoise, KSamplerSelect, BasicScheduler,
SamplerCustomAdvanced, VAELoader/VAEDecode), CLIPTextEncodeFlux in place of the pair, Kontext's edit graph
(LoadImage → FluxKontextImageScale → VAEEncode → ReferenceLatent, ConditioningZeroOut negative, KSampler) and
the all-in-one fp8 checkpoint of flux_schnell (CheckpointLoaderSimple → KSampler)."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from comfymesh.diffusion.models import tiny_flux
from tests.mesh import SHARED, Mesh, assert_reruns_identically, png_pixels

PROMPT = "a cat holding a sign that says hello world"

DEV: dict[str, Any] = {
    "12": {"inputs": {"unet_name": tiny_flux.DIFFUSION_MODEL, "weight_dtype": "default"},
           "class_type": "UNETLoader"},
    "11": {"inputs": {"clip_name1": tiny_flux.T5, "clip_name2": tiny_flux.CLIP_L, "type": "flux",
                      "device": "default"}, "class_type": "DualCLIPLoader"},
    "10": {"inputs": {"vae_name": "ae.safetensors"}, "class_type": "VAELoader"},
    "30": {"inputs": {"max_shift": 1.15, "base_shift": 0.5, "width": 64, "height": 64, "model": ["12", 0]},
           "class_type": "ModelSamplingFlux"},
    "6": {"inputs": {"text": PROMPT, "clip": ["11", 0]}, "class_type": "CLIPTextEncode"},
    "26": {"inputs": {"guidance": 3.5, "conditioning": ["6", 0]}, "class_type": "FluxGuidance"},
    "22": {"inputs": {"model": ["30", 0], "conditioning": ["26", 0]}, "class_type": "BasicGuider"},
    "25": {"inputs": {"noise_seed": 219670278747233}, "class_type": "RandomNoise"},
    "16": {"inputs": {"sampler_name": "euler"}, "class_type": "KSamplerSelect"},
    "17": {"inputs": {"scheduler": "simple", "steps": 2, "denoise": 1, "model": ["30", 0]},
           "class_type": "BasicScheduler"},
    "27": {"inputs": {"width": 64, "height": 64, "batch_size": 1}, "class_type": "EmptySD3LatentImage"},
    "13": {"inputs": {"noise": ["25", 0], "guider": ["22", 0], "sampler": ["16", 0], "sigmas": ["17", 0],
                      "latent_image": ["27", 0]}, "class_type": "SamplerCustomAdvanced"},
    "8": {"inputs": {"samples": ["13", 0], "vae": ["10", 0]}, "class_type": "VAEDecode"},
    "9": {"inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}, "class_type": "SaveImage"},
}

# flux_kontext_dev_basic's graph (the input image cut back to 64×64 after FluxKontextImageScale)
KONTEXT: dict[str, Any] = {
    **{k: v for k, v in DEV.items() if k in ("12", "11", "10", "6", "8", "9")},
    "41": {"inputs": {"image": "kontext_input.png"}, "class_type": "LoadImage"},
    "42": {"inputs": {"image": ["41", 0]}, "class_type": "FluxKontextImageScale"},
    "43": {"inputs": {"upscale_method": "area", "width": 64, "height": 64, "crop": "disabled", "image": ["42", 0]},
           "class_type": "ImageScale"},
    "124": {"inputs": {"pixels": ["43", 0], "vae": ["10", 0]}, "class_type": "VAEEncode"},
    "177": {"inputs": {"conditioning": ["6", 0], "latent": ["124", 0]}, "class_type": "ReferenceLatent"},
    "35": {"inputs": {"guidance": 2.5, "conditioning": ["177", 0]}, "class_type": "FluxGuidance"},
    "135": {"inputs": {"conditioning": ["6", 0]}, "class_type": "ConditioningZeroOut"},
    "31": {"inputs": {"seed": 7, "steps": 2, "cfg": 1, "sampler_name": "euler", "scheduler": "simple",
                      "denoise": 1, "model": ["12", 0], "positive": ["35", 0], "negative": ["135", 0],
                      "latent_image": ["124", 0]}, "class_type": "KSampler"},
}
KONTEXT = copy.deepcopy(KONTEXT)
KONTEXT["8"]["inputs"]["samples"] = ["31", 0]

# flux_schnell: the fp8 all-in-one checkpoint
SCHNELL_CHECKPOINT: dict[str, Any] = {
    "30": {"inputs": {"ckpt_name": tiny_flux.CHECKPOINT}, "class_type": "CheckpointLoaderSimple"},
    "6": {"inputs": {"text": PROMPT, "clip": ["30", 1]}, "class_type": "CLIPTextEncode"},
    "33": {"inputs": {"text": "", "clip": ["30", 1]}, "class_type": "CLIPTextEncode"},
    "27": {"inputs": {"width": 64, "height": 64, "batch_size": 1}, "class_type": "EmptySD3LatentImage"},
    "31": {"inputs": {"seed": 972054013131368, "steps": 2, "cfg": 1, "sampler_name": "euler", "scheduler": "simple",
                      "denoise": 1, "model": ["30", 0], "positive": ["6", 0], "negative": ["33", 0],
                      "latent_image": ["27", 0]}, "class_type": "KSampler"},
    "8": {"inputs": {"samples": ["31", 0], "vae": ["30", 2]}, "class_type": "VAEDecode"},
    "9": {"inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}, "class_type": "SaveImage"},
}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("flux-home")
    tiny_flux.make_tiny_flux(home / "models", seed=3)
    tiny_flux.make_tiny_flux_checkpoint(home / "models" / "checkpoints" / tiny_flux.CHECKPOINT, seed=4)
    mesh = Mesh(home, stages=("imaging", "diffusion"))
    (home / "input").mkdir(parents=True, exist_ok=True)
    shutil.copy(SHARED / "data" / "astronaut.png", home / "input" / "kontext_input.png")
    try:
        yield mesh.start()
    finally:
        mesh.stop()



def test_dev_on_the_custom_sampler_reruns_identically_and_guidance_drives_it(mesh: Mesh) -> None:
    first = assert_reruns_identically(mesh, DEV)
    image = png_pixels(first)
    assert image.shape == (64, 64, 3) and image.std() > 0
    other = copy.deepcopy(DEV)
    other["26"]["inputs"]["guidance"] = 6.0
    assert not np.array_equal(png_pixels(mesh.run_output(other)), image)
    # CLIPTextEncodeFlux with the same prompt for both encoders is CLIPTextEncode → FluxGuidance
    joint = copy.deepcopy(DEV)
    joint["26"] = {"inputs": {"clip_l": PROMPT, "t5xxl": PROMPT, "guidance": 3.5, "clip": ["11", 0]},
                   "class_type": "CLIPTextEncodeFlux"}
    assert np.array_equal(png_pixels(mesh.run_output(joint)), image)


def test_kontext_reference_latent_drives_the_edit(mesh: Mesh) -> None:
    first = assert_reruns_identically(mesh, KONTEXT)
    assert png_pixels(first).shape == (64, 64, 3)
    unreferenced = copy.deepcopy(KONTEXT)
    unreferenced["35"]["inputs"]["conditioning"] = ["6", 0]
    assert not np.array_equal(png_pixels(mesh.run_output(unreferenced)), png_pixels(first))


def test_schnell_checkpoint_form(mesh: Mesh) -> None:
    first = assert_reruns_identically(mesh, SCHNELL_CHECKPOINT)
    image = png_pixels(first)
    assert image.shape == (64, 64, 3) and image.std() > 0
