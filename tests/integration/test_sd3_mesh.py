"""SD3.5 through the mesh with tiny random-weight files in ComfyUI's layouts: sd3.5_simple_example's graph
(CheckpointLoaderSimple on the scaled-fp8 all-in-one checkpoint under the template's file name, CLIPTextEncode
with an empty negative, EmptySD3LatentImage, KSampler euler / sgm_uniform / cfg 4, VAEDecode) and the split
form (UNETLoader → ModelSamplingSD3, DualCLIPLoader `sd3` with CLIP-L and CLIP-G, VAELoader), 64×64, 2 steps;
and the three-encoder form (TripleCLIPLoader with CLIP-L, CLIP-G and T5-XXL, CLIPTextEncodeSD3) on a tiny MMDiT
whose text width is the tiny T5's."""

from __future__ import annotations

import copy
import io
import shutil
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from comfymesh.diffusion.models import tiny_sd3
from tests.mesh import Mesh, assert_reruns_identically

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

T5_MODEL = "sd3.5_medium_t5.safetensors"  # a tiny MMDiT whose text width is the tiny T5's (128)
TRIPLE = copy.deepcopy(SPLIT)
TRIPLE["1"]["inputs"]["unet_name"] = T5_MODEL
TRIPLE["5"] = {"inputs": {"clip_name1": tiny_sd3.T5, "clip_name2": tiny_sd3.CLIP_G, "clip_name3": tiny_sd3.CLIP_L},
               "class_type": "TripleCLIPLoader"}
TRIPLE["16"] = {"inputs": {"clip": ["5", 0], "clip_l": "a bottle", "clip_g": "a bottle with a galaxy inside it",
                           "t5xxl": "a bottle with a pink and red galaxy inside it", "empty_padding": "none"},
                "class_type": "CLIPTextEncodeSD3"}
# no padding: CLIP-L's empty prompt is topped up to CLIP-G's window, T5 encodes its end token alone (a
# negative with every text empty would give ComfyUI's 2048 zeros as pooled, too wide for the tiny model)
TRIPLE["40"] = {"inputs": {"clip": ["5", 0], "clip_l": "", "clip_g": "blurry", "t5xxl": "", "empty_padding": "none"},
                "class_type": "CLIPTextEncodeSD3"}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("sd3-home")
    tiny_sd3.make_tiny_sd3(home / "models", seed=3)
    t5_set = tiny_sd3.make_tiny_sd3(tmp_path_factory.mktemp("sd3-t5") / "models", seed=4, t5_width=128)
    shutil.copy(t5_set["diffusion_models"], home / "models" / "diffusion_models" / T5_MODEL)
    shutil.copy(t5_set["t5"], home / "models" / "text_encoders" / tiny_sd3.T5)
    mesh = Mesh(home, stages=("imaging", "diffusion"))
    try:
        yield mesh.start()
    finally:
        mesh.stop()


def test_checkpoint_form_runs_and_reruns_identically(mesh: Mesh) -> None:
    first = assert_reruns_identically(mesh, SIMPLE)
    image = np.asarray(Image.open(io.BytesIO(first)))
    assert image.shape == (64, 64, 3)
    assert image.std() > 0


def test_split_form_runs_and_shift_drives_it(mesh: Mesh) -> None:
    first = assert_reruns_identically(mesh, SPLIT)
    assert np.asarray(Image.open(io.BytesIO(first))).shape == (64, 64, 3)
    # the checkpoint's fp8 weights round the model: the split file's fp16 one gives other pixels
    assert first != mesh.run_output(SIMPLE)
    unshifted = copy.deepcopy(SPLIT)
    unshifted["2"]["inputs"]["shift"] = 1.0
    assert mesh.run_output(unshifted) != first


def test_triple_clip_loader_and_clip_text_encode_sd3(mesh: Mesh) -> None:
    first = assert_reruns_identically(mesh, TRIPLE)
    image = np.asarray(Image.open(io.BytesIO(first)))
    assert image.shape == (64, 64, 3) and image.std() > 0
    # the T5 prompt reaches the model
    other = copy.deepcopy(TRIPLE)
    other["16"]["inputs"]["t5xxl"] = "a cat"
    assert mesh.run_output(other) != first
