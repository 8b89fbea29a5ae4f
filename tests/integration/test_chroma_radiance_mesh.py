"""Chroma Radiance through the mesh, with tiny random-weight files under the template's names:
image_chroma1_radiance_text_to_image's graph (UNETLoader → ModelSamplingAuraFlow 1 → ChromaRadianceOptions;
CLIPLoader type chroma with T5TokenizerOptions; CFGGuider 3.5, KSamplerSelect euler, BetaSamplingScheduler 0.4/0.4,
RandomNoise, EmptyChromaRadianceLatentImage, SamplerCustomAdvanced; VAELoader's pixel_space VAE → VAEDecode →
SaveImage) at 64×48 pixels and 2 steps."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from comfymesh.diffusion.models import tiny_chroma_radiance
from comfymesh.diffusion.models.tiny_flux import random_tensors, t5_shapes
from tests.mesh import Mesh, assert_reruns_identically, png_pixels

T5 = "t5xxl_fp8_e4m3fn_scaled.safetensors"
TEMPLATE: dict[str, Any] = {
    "731": {"inputs": {"unet_name": tiny_chroma_radiance.TEMPLATE_MODEL, "weight_dtype": "default"},
            "class_type": "UNETLoader"},
    "701": {"inputs": {"shift": 1.0, "model": ["731", 0]}, "class_type": "ModelSamplingAuraFlow"},
    "747": {"inputs": {"preserve_wrapper": True, "start_sigma": 1.0, "end_sigma": 0.0, "nerf_tile_size": -1,
                       "model": ["701", 0]}, "class_type": "ChromaRadianceOptions"},
    "733": {"inputs": {"clip_name": T5, "type": "chroma", "device": "default"}, "class_type": "CLIPLoader"},
    "741": {"inputs": {"min_padding": 0, "min_length": 0, "clip": ["733", 0]}, "class_type": "T5TokenizerOptions"},
    "693": {"inputs": {"text": "tiny bakers on a golden croissant", "clip": ["741", 0]},
            "class_type": "CLIPTextEncode"},
    "728": {"inputs": {"text": "low quality, blurred", "clip": ["741", 0]}, "class_type": "CLIPTextEncode"},
    "694": {"inputs": {"cfg": 3.5, "model": ["747", 0], "positive": ["693", 0], "negative": ["728", 0]},
            "class_type": "CFGGuider"},
    "700": {"inputs": {"sampler_name": "euler"}, "class_type": "KSamplerSelect"},
    "751": {"inputs": {"steps": 2, "alpha": 0.4, "beta": 0.4, "model": ["747", 0]},
            "class_type": "BetaSamplingScheduler"},
    "718": {"inputs": {"noise_seed": 883855055680159}, "class_type": "RandomNoise"},
    "760": {"inputs": {"width": 64, "height": 48, "batch_size": 1}, "class_type": "EmptyChromaRadianceLatentImage"},
    "753": {"inputs": {"noise": ["718", 0], "guider": ["694", 0], "sampler": ["700", 0], "sigmas": ["751", 0],
                       "latent_image": ["760", 0]}, "class_type": "SamplerCustomAdvanced"},
    "710": {"inputs": {"vae_name": "pixel_space"}, "class_type": "VAELoader"},
    "298": {"inputs": {"samples": ["753", 0], "vae": ["710", 0]}, "class_type": "VAEDecode"},
    "740": {"inputs": {"filename_prefix": "Chroma-Radiance", "images": ["298", 0]}, "class_type": "SaveImage"},
}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("chroma-radiance-home")
    tiny_chroma_radiance.make_tiny_chroma_radiance(home / "models", seed=3)
    (home / "models" / "text_encoders").mkdir(parents=True, exist_ok=True)
    save_file(random_tensors(t5_shapes(), 3, torch.bfloat16), str(home / "models" / "text_encoders" / T5))
    mesh = Mesh(home, stages=("imaging", "diffusion"))
    try:
        yield mesh.start()
    finally:
        mesh.stop()


def test_template_graph_runs_and_reruns_identically(mesh: Mesh) -> None:
    image = png_pixels(assert_reruns_identically(mesh, TEMPLATE))
    assert image.shape == (48, 64, 3) and image.std() > 0


def test_the_prompt_and_the_seed_change_the_image(mesh: Mesh) -> None:
    first = png_pixels(mesh.run_output(TEMPLATE))
    other = copy.deepcopy(TEMPLATE)
    other["693"]["inputs"]["text"] = "a lighthouse at night"
    assert not np.array_equal(png_pixels(mesh.run_output(other)), first)
    seeded = copy.deepcopy(TEMPLATE)
    seeded["718"]["inputs"]["noise_seed"] = 1
    assert not np.array_equal(png_pixels(mesh.run_output(seeded)), first)


def test_the_pixel_space_vae_encodes_what_it_decodes(mesh: Mesh) -> None:
    prompt = copy.deepcopy(TEMPLATE)
    prompt["299"] = {"inputs": {"pixels": ["298", 0], "vae": ["710", 0]}, "class_type": "VAEEncode"}
    prompt["300"] = {"inputs": {"samples": ["299", 0], "vae": ["710", 0]}, "class_type": "VAEDecode"}
    prompt["740"]["inputs"]["images"] = ["300", 0]
    assert np.array_equal(png_pixels(mesh.run_output(prompt)), png_pixels(mesh.run_output(TEMPLATE)))
