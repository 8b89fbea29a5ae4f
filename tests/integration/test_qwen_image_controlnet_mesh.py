"""Qwen-Image with the InstantX inpainting ControlNet through the mesh, with tiny random-weight files under the
template's names: image_qwen_image_instantx_inpainting_controlnet's graph (LoadImage's image and mask →
ControlNetInpaintingAliMamaApply with ControlNetLoader's net and the Qwen-Image VAE; the image VAEEncode'd with
SetLatentNoiseMask as the latent; UNETLoader → ModelSamplingAuraFlow 3.1; KSampler euler / simple, cfg 2.5;
VAEDecode, ImageCompositeMasked pasting the kept pixels back), at 96×96 and 2 steps."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from comfymesh.diffusion.models import tiny_qwen_controlnet, tiny_qwen_image
from tests.mesh import Mesh, assert_reruns_identically, png_pixels
from tests.qwen_image_graph import qwen_image_loaders

INPUT = "instantx_inpaint_input.png"
TEMPLATE: dict[str, Any] = {
    **qwen_image_loaders(),
    "84": {"inputs": {"control_net_name": tiny_qwen_controlnet.INPAINTING}, "class_type": "ControlNetLoader"},
    "71": {"inputs": {"image": INPUT}, "class_type": "LoadImage"},
    "6": {"inputs": {"text": "The Queen, on a throne, surrounded by Knights", "clip": ["38", 0]},
          "class_type": "CLIPTextEncode"},
    "7": {"inputs": {"text": " ", "clip": ["38", 0]}, "class_type": "CLIPTextEncode"},
    "108": {"inputs": {"strength": 1.0, "start_percent": 0.0, "end_percent": 1.0, "positive": ["6", 0],
                       "negative": ["7", 0], "control_net": ["84", 0], "vae": ["39", 0], "image": ["71", 0],
                       "mask": ["71", 1]}, "class_type": "ControlNetInpaintingAliMamaApply"},
    "76": {"inputs": {"pixels": ["71", 0], "vae": ["39", 0]}, "class_type": "VAEEncode"},
    "122": {"inputs": {"samples": ["76", 0], "mask": ["71", 1]}, "class_type": "SetLatentNoiseMask"},
    "3": {"inputs": {"seed": 134554158057228, "steps": 2, "cfg": 2.5, "sampler_name": "euler", "scheduler": "simple",
                     "denoise": 1, "model": ["66", 0], "positive": ["108", 0], "negative": ["108", 1],
                     "latent_image": ["122", 0]}, "class_type": "KSampler"},
    "8": {"inputs": {"samples": ["3", 0], "vae": ["39", 0]}, "class_type": "VAEDecode"},
    "126": {"inputs": {"x": 0, "y": 0, "resize_source": False, "destination": ["71", 0], "source": ["8", 0],
                       "mask": ["71", 1]}, "class_type": "ImageCompositeMasked"},
    "60": {"inputs": {"filename_prefix": "ComfyUI", "images": ["126", 0]}, "class_type": "SaveImage"},
}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("qwen-controlnet-home")
    tiny_qwen_image.make_tiny_qwen_image(home / "models", seed=3)
    tiny_qwen_controlnet.make_tiny_qwen_controlnets(home / "models", seed=1)
    mesh = Mesh(home, stages=("imaging", "diffusion"))
    rng = np.random.default_rng(5)
    pixels = (rng.random((96, 96, 3)) * 255).astype(np.uint8)
    alpha = np.full((96, 96), 255, np.uint8)
    alpha[16:64, 24:80] = 0  # LoadImage's mask: 1 (repaint) where the alpha is 0
    Image.fromarray(np.dstack([pixels, alpha])).save(home / "input" / INPUT)
    try:
        yield mesh.start()
    finally:
        mesh.stop()


def test_template_graph_runs_and_reruns_identically(mesh: Mesh) -> None:
    first = png_pixels(assert_reruns_identically(mesh, TEMPLATE))
    assert first.shape == (96, 96, 3) and first.std() > 0


def test_the_controlnet_changes_the_repainted_area_and_strength_zero_is_without_it(mesh: Mesh) -> None:
    controlled = png_pixels(mesh.run_output(TEMPLATE))
    zero = copy.deepcopy(TEMPLATE)
    zero["108"]["inputs"]["strength"] = 0.0
    plain = copy.deepcopy(TEMPLATE)
    plain["3"]["inputs"].update(positive=["6", 0], negative=["7", 0])
    without = png_pixels(mesh.run_output(plain))
    assert np.array_equal(png_pixels(mesh.run_output(zero)), without)
    assert not np.array_equal(controlled[16:64, 24:80], without[16:64, 24:80])
    # the kept pixels are pasted back either way
    assert np.array_equal(controlled[:16], without[:16])


def test_the_inpainting_net_needs_its_mask_node(mesh: Mesh) -> None:
    prompt = copy.deepcopy(TEMPLATE)
    del prompt["108"]
    prompt["108"] = {"inputs": {"strength": 1.0, "start_percent": 0.0, "end_percent": 1.0, "positive": ["6", 0],
                                "negative": ["7", 0], "control_net": ["84", 0], "vae": ["39", 0],
                                "image": ["71", 0]}, "class_type": "ControlNetApplyAdvanced"}
    job = mesh.wait(mesh.submit(prompt), timeout=120)
    assert job["status"] == "failed"
    assert "ControlNetInpaintingAliMamaApply" in str(job["error"])


def test_the_union_net_applies_through_apply_controlnet_with_its_vae(mesh: Mesh) -> None:
    prompt = copy.deepcopy(TEMPLATE)
    prompt["84"]["inputs"]["control_net_name"] = tiny_qwen_controlnet.UNION
    prompt["108"] = {"inputs": {"strength": 0.8, "start_percent": 0.0, "end_percent": 1.0, "positive": ["6", 0],
                                "negative": ["7", 0], "control_net": ["84", 0], "vae": ["39", 0],
                                "image": ["71", 0]}, "class_type": "ControlNetApplyAdvanced"}
    controlled = png_pixels(assert_reruns_identically(mesh, prompt))
    plain = copy.deepcopy(TEMPLATE)
    plain["3"]["inputs"].update(positive=["6", 0], negative=["7", 0])
    assert not np.array_equal(controlled, png_pixels(mesh.run_output(plain)))
