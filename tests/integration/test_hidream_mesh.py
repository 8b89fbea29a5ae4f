"""HiDream through the mesh with tiny random-weight files under the templates' file names: hidream_i1_full's graph
(UNETLoader → ModelSamplingSD3 shift 3, QuadrupleCLIPLoader with CLIP-L, CLIP-G, scaled-fp8 T5-XXL and Llama,
CLIPTextEncode positive and negative, EmptySD3LatentImage, KSampler uni_pc / simple / cfg 5, VAELoader ae,
VAEDecode) at 64×48, 2 steps; CLIPTextEncodeHiDream's per-encoder prompts; and hidream_e1_1's editing graph
(InstructPixToPixConditioning, CFGNorm, DualCFGGuider, SamplerCustomAdvanced) on a loaded image."""

from __future__ import annotations

import copy
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from comfymesh.diffusion.models import tiny_hidream
from tests.mesh import Mesh, assert_reruns_identically

PROMPT = "A lo-fi, grungy wide shot of a ragged large red tree leaning slightly to one side"
I1: dict[str, Any] = {
    "54": {"inputs": {"clip_name1": tiny_hidream.CLIP_L, "clip_name2": tiny_hidream.CLIP_G,
                      "clip_name3": tiny_hidream.T5, "clip_name4": tiny_hidream.LLAMA},
           "class_type": "QuadrupleCLIPLoader"},
    "69": {"inputs": {"unet_name": "hidream_i1_full_fp8.safetensors", "weight_dtype": "default"},
           "class_type": "UNETLoader"},
    "70": {"inputs": {"shift": 3.0, "model": ["69", 0]}, "class_type": "ModelSamplingSD3"},
    "16": {"inputs": {"text": PROMPT, "clip": ["54", 0]}, "class_type": "CLIPTextEncode"},
    "40": {"inputs": {"text": "bad ugly jpeg artifacts", "clip": ["54", 0]}, "class_type": "CLIPTextEncode"},
    "53": {"inputs": {"width": 64, "height": 48, "batch_size": 1}, "class_type": "EmptySD3LatentImage"},
    "3": {"inputs": {"seed": 647719102242276, "steps": 2, "cfg": 5.0, "sampler_name": "uni_pc",
                     "scheduler": "simple", "denoise": 1.0, "model": ["70", 0], "positive": ["16", 0],
                     "negative": ["40", 0], "latent_image": ["53", 0]}, "class_type": "KSampler"},
    "55": {"inputs": {"vae_name": tiny_hidream.VAE}, "class_type": "VAELoader"},
    "8": {"inputs": {"samples": ["3", 0], "vae": ["55", 0]}, "class_type": "VAEDecode"},
    "9": {"inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}, "class_type": "SaveImage"},
}

E1: dict[str, Any] = {
    "54": I1["54"], "55": I1["55"],
    "1": {"inputs": {"unet_name": "hidream_e1_1_bf16.safetensors", "weight_dtype": "default"},
          "class_type": "UNETLoader"},
    "2": {"inputs": {"strength": 1.0, "model": ["1", 0]}, "class_type": "CFGNorm"},
    "10": {"inputs": {"image": "e1_input.png", "upload": "image"}, "class_type": "LoadImage"},
    "16": {"inputs": {"text": "Change the girl's hair", "clip": ["54", 0]}, "class_type": "CLIPTextEncode"},
    "40": {"inputs": {"text": "low quality, blurry, distorted", "clip": ["54", 0]}, "class_type": "CLIPTextEncode"},
    "20": {"inputs": {"positive": ["16", 0], "negative": ["40", 0], "vae": ["55", 0], "pixels": ["10", 0]},
           "class_type": "InstructPixToPixConditioning"},
    "21": {"inputs": {"cfg_conds": 3.0, "cfg_cond2_negative": 1.5, "style": "regular", "model": ["2", 0],
                      "cond1": ["20", 0], "cond2": ["20", 1], "negative": ["40", 0]}, "class_type": "DualCFGGuider"},
    "22": {"inputs": {"sampler_name": "euler"}, "class_type": "KSamplerSelect"},
    "23": {"inputs": {"scheduler": "simple", "steps": 2, "denoise": 1.0, "model": ["2", 0]},
           "class_type": "BasicScheduler"},
    "24": {"inputs": {"noise_seed": 567500569211369}, "class_type": "RandomNoise"},
    "25": {"inputs": {"noise": ["24", 0], "guider": ["21", 0], "sampler": ["22", 0], "sigmas": ["23", 0],
                      "latent_image": ["20", 2]}, "class_type": "SamplerCustomAdvanced"},
    "8": {"inputs": {"samples": ["25", 0], "vae": ["55", 0]}, "class_type": "VAEDecode"},
    "9": {"inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}, "class_type": "SaveImage"},
}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("hidream-home")
    tiny_hidream.make_template_files(home / "models", seed=5)
    (home / "input").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(home / "input" / "e1_input.png")
    Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(home / "input" / "e1_other.png")
    mesh = Mesh(home, stages=("imaging", "diffusion"))
    try:
        yield mesh.start()
    finally:
        mesh.stop()


def _image(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_i1_template_graph_runs_and_reruns_identically(mesh: Mesh) -> None:
    first = assert_reruns_identically(mesh, I1)
    image = _image(first)
    assert image.shape == (48, 64, 3) and image.std() > 0
    # ModelSamplingSD3's shift and the prompt reach the pixels (the PNGs differ by their prompt text anyway)
    unshifted = copy.deepcopy(I1)
    unshifted["70"]["inputs"]["shift"] = 6.0
    assert not np.array_equal(_image(mesh.run_output(unshifted)), image)
    other = copy.deepcopy(I1)
    other["16"]["inputs"]["text"] = "a cat"
    assert not np.array_equal(_image(mesh.run_output(other)), image)


def test_clip_text_encode_hidream_gives_each_encoder_its_prompt(mesh: Mesh) -> None:
    same = copy.deepcopy(I1)
    same["16"] = {"inputs": {"clip": ["54", 0], "clip_l": PROMPT, "clip_g": PROMPT, "t5xxl": PROMPT,
                             "llama": PROMPT}, "class_type": "CLIPTextEncodeHiDream"}
    # the four prompts equal to CLIPTextEncode's text: the same conditioning, the same pixels
    pixels = _image(mesh.run_output(same))
    assert np.array_equal(pixels, _image(mesh.run_output(I1)))
    llama_only = copy.deepcopy(same)
    llama_only["16"]["inputs"]["llama"] = "a cat"
    assert not np.array_equal(_image(mesh.run_output(llama_only)), pixels)


def test_e1_editing_graph_runs_and_the_image_reaches_the_model(mesh: Mesh) -> None:
    first = assert_reruns_identically(mesh, E1)
    image = _image(first)
    assert image.shape == (48, 64, 3) and image.std() > 0
    other = copy.deepcopy(E1)
    other["10"]["inputs"]["image"] = "e1_other.png"
    assert not np.array_equal(_image(mesh.run_output(other)), image)
