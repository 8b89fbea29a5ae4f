"""Qwen-Image with a DiffSynth ControlNet patch through the mesh, with tiny random-weight files under the
template's names: image_qwen_image_controlnet_patch's graph (LoadImage → ImageScaleToTotalPixels → Canny →
QwenImageDiffsynthControlnet with ModelPatchLoader's canny patch on UNETLoader → ModelSamplingAuraFlow 3.1; the
scaled image VAEEncode'd as the latent; KSampler euler / simple, cfg 2.5; its bypassed Lightning LoRA left out as
the frontend leaves it out), at 0.01 megapixels (100×100: the 96×96 latent makes the patch re-encode the control
image at the latent's size, as ComfyUI does) and 2 steps; and the inpaint patch with LoadImage's mask."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from comfymesh.diffusion.models import tiny_diffsynth, tiny_qwen_image
from tests.mesh import Mesh, assert_reruns_identically, png_pixels
from tests.qwen_image_graph import qwen_image_loaders

INPUT = "controlnet_patch_input.png"
TEMPLATE: dict[str, Any] = {
    **qwen_image_loaders(),
    "70": {"inputs": {"name": tiny_diffsynth.CANNY}, "class_type": "ModelPatchLoader"},
    "71": {"inputs": {"image": INPUT}, "class_type": "LoadImage"},
    "75": {"inputs": {"upscale_method": "area", "megapixels": 0.01, "resolution_steps": 1, "image": ["71", 0]},
           "class_type": "ImageScaleToTotalPixels"},
    "72": {"inputs": {"low_threshold": 0.1, "high_threshold": 0.2, "image": ["75", 0]}, "class_type": "Canny"},
    "69": {"inputs": {"strength": 1.0, "model": ["66", 0], "model_patch": ["70", 0], "vae": ["39", 0],
                      "image": ["72", 0]}, "class_type": "QwenImageDiffsynthControlnet"},
    "76": {"inputs": {"pixels": ["75", 0], "vae": ["39", 0]}, "class_type": "VAEEncode"},
    "6": {"inputs": {"text": "Conceptual makeup, a fairy girl with pink hair", "clip": ["38", 0]},
          "class_type": "CLIPTextEncode"},
    "7": {"inputs": {"text": " ", "clip": ["38", 0]}, "class_type": "CLIPTextEncode"},
    "3": {"inputs": {"seed": 91832422759220, "steps": 2, "cfg": 2.5, "sampler_name": "euler", "scheduler": "simple",
                     "denoise": 1, "model": ["69", 0], "positive": ["6", 0], "negative": ["7", 0],
                     "latent_image": ["76", 0]}, "class_type": "KSampler"},
    "8": {"inputs": {"samples": ["3", 0], "vae": ["39", 0]}, "class_type": "VAEDecode"},
    "60": {"inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}, "class_type": "SaveImage"},
}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("qwen-diffsynth-home")
    tiny_qwen_image.make_tiny_qwen_image(home / "models", seed=3)
    tiny_diffsynth.make_tiny_diffsynth(home / "models", seed=1)
    mesh = Mesh(home, stages=("imaging", "diffusion"))
    try:
        yield mesh.start()
    finally:
        mesh.stop()


@pytest.fixture(scope="module")
def inputs(mesh: Mesh) -> str:
    rng = np.random.default_rng(11)
    pixels = (rng.random((100, 100, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(mesh.home / "input" / INPUT)
    alpha = np.full((100, 100), 255, np.uint8)
    alpha[20:60, 30:90] = 0  # LoadImage's mask: 1 where the alpha is 0
    Image.fromarray(np.dstack([pixels, alpha])).save(mesh.home / "input" / "inpaint.png")
    return INPUT


def test_template_graph_runs_and_reruns_identically(mesh: Mesh, inputs: str) -> None:
    first = assert_reruns_identically(mesh, TEMPLATE)
    image = png_pixels(first)
    assert image.shape == (96, 96, 3) and image.std() > 0


def test_strength_zero_is_the_unpatched_image_and_the_patch_changes_it(mesh: Mesh, inputs: str) -> None:
    patched = mesh.run_output(TEMPLATE)
    zero = copy.deepcopy(TEMPLATE)
    zero["69"]["inputs"]["strength"] = 0.0
    unpatched = copy.deepcopy(TEMPLATE)
    unpatched["3"]["inputs"]["model"] = ["66", 0]
    # the pixels (the PNGs' embedded prompts differ)
    assert np.array_equal(png_pixels(mesh.run_output(zero)), png_pixels(mesh.run_output(unpatched)))
    assert not np.array_equal(png_pixels(mesh.run_output(unpatched)), png_pixels(patched))
    depth = copy.deepcopy(TEMPLATE)
    depth["70"]["inputs"]["name"] = tiny_diffsynth.DEPTH
    assert not np.array_equal(png_pixels(mesh.run_output(depth)), png_pixels(patched))


def test_inpaint_patch_takes_the_mask(mesh: Mesh, inputs: str) -> None:
    prompt = copy.deepcopy(TEMPLATE)
    prompt["70"]["inputs"]["name"] = tiny_diffsynth.INPAINT
    prompt["71"]["inputs"]["image"] = "inpaint.png"
    prompt["69"]["inputs"]["mask"] = ["71", 1]
    with_mask = assert_reruns_identically(mesh, prompt)
    del prompt["69"]["inputs"]["mask"]
    assert not np.array_equal(png_pixels(mesh.run_output(prompt)), png_pixels(with_mask))


def test_a_patch_on_another_vae_fails_with_the_node(mesh: Mesh, inputs: str) -> None:
    prompt = copy.deepcopy(TEMPLATE)
    prompt["70"]["inputs"]["name"] = tiny_qwen_image.DIFFUSION_MODEL
    (mesh.home / "models" / "model_patches" / tiny_qwen_image.DIFFUSION_MODEL).write_bytes(
        (mesh.home / "models" / "diffusion_models" / tiny_qwen_image.DIFFUSION_MODEL).read_bytes())
    job = mesh.wait(mesh.submit(prompt), timeout=120)
    assert job["status"] == "failed"
    assert "no model patch" in str(job["error"])


def _patch_bundles(mesh: Mesh) -> list[Path]:
    """The stored bundles of QwenImageDiffsynthControlnet's inputs (their metadata names them)."""
    found = []
    for path in (mesh.home / "artifacts").rglob("*.safetensors"):
        with safe_open(str(path), "np") as handle:
            if "DIFFSYNTH_INPUTS" in (handle.metadata() or {}).get("comfymesh", ""):
                found.append(path)
    return found


def test_a_cached_patch_whose_inputs_are_gone_runs_again(mesh: Mesh, inputs: str) -> None:
    prompt = copy.deepcopy(TEMPLATE)
    prompt["69"]["inputs"]["strength"] = 0.6
    first = mesh.run_output(prompt)
    bundles = _patch_bundles(mesh)
    assert bundles
    for path in bundles:
        path.unlink()
    # another seed: the patch node's cached MODEL handle names a bundle that is gone, so it is no cache hit
    reseeded = copy.deepcopy(prompt)
    reseeded["3"]["inputs"]["seed"] = 7
    assert not np.array_equal(png_pixels(mesh.run_output(reseeded)), png_pixels(first))
    assert _patch_bundles(mesh)
