"""FLUX.1 USO through the mesh with tiny random-weight files under flux1_dev_uso_reference_image_gen's file
names, 64×64, 2 steps: the template's graph with its two USOStyleReference subgraphs enabled (CheckpointLoaderSimple
→ LoraLoaderModelOnly → USOStyleReference ×2 from ModelPatchLoader and CLIPVisionLoader/CLIPVisionEncode; LoadImage
→ ImageScaleToMaxDimension → VAEEncode → ReferenceLatent → FluxKontextMultiReferenceLatentMethod uxo/uno →
FluxGuidance; ConditioningZeroOut negative; KSampler). Reruns give identical bytes; each style reference changes
the image; a projector given to another model-patch node is refused."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from comfymesh.diffusion.models import clip_vision, tiny_flux, tiny_lora, tiny_uso
from tests.mesh import SHARED, Mesh, assert_reruns_identically, png_pixels

LORA = "uso-flux1-dit-lora-v1.safetensors"
PROMPT = "A European girl with a heartfelt smile."

USO: dict[str, Any] = {
    "30": {"inputs": {"ckpt_name": tiny_uso.CHECKPOINT}, "class_type": "CheckpointLoaderSimple"},
    "43": {"inputs": {"lora_name": LORA, "strength_model": 1.0, "model": ["30", 0]},
           "class_type": "LoraLoaderModelOnly"},
    "39": {"inputs": {"name": tiny_uso.PROJECTOR}, "class_type": "ModelPatchLoader"},
    "40": {"inputs": {"clip_name": tiny_flux.SIGLIP}, "class_type": "CLIPVisionLoader"},
    "53": {"inputs": {"image": "style_a.png"}, "class_type": "LoadImage"},
    "46": {"inputs": {"image": "style_b.png"}, "class_type": "LoadImage"},
    "52": {"inputs": {"crop": "center", "clip_vision": ["40", 0], "image": ["53", 0]}, "class_type": "CLIPVisionEncode"},
    "115": {"inputs": {"crop": "center", "clip_vision": ["40", 0], "image": ["46", 0]},
            "class_type": "CLIPVisionEncode"},
    "54": {"inputs": {"model": ["43", 0], "model_patch": ["39", 0], "clip_vision_output": ["52", 0]},
           "class_type": "USOStyleReference"},
    "116": {"inputs": {"model": ["54", 0], "model_patch": ["39", 0], "clip_vision_output": ["115", 0]},
            "class_type": "USOStyleReference"},
    "47": {"inputs": {"image": "subject.png"}, "class_type": "LoadImage"},
    "109": {"inputs": {"upscale_method": "area", "largest_size": 64, "image": ["47", 0]},
            "class_type": "ImageScaleToMaxDimension"},
    "51": {"inputs": {"pixels": ["109", 0], "vae": ["30", 2]}, "class_type": "VAEEncode"},
    "6": {"inputs": {"text": PROMPT, "clip": ["30", 1]}, "class_type": "CLIPTextEncode"},
    "44": {"inputs": {"conditioning": ["6", 0], "latent": ["51", 0]}, "class_type": "ReferenceLatent"},
    "41": {"inputs": {"reference_latents_method": "uxo/uno", "conditioning": ["44", 0]},
           "class_type": "FluxKontextMultiReferenceLatentMethod"},
    "35": {"inputs": {"guidance": 3.5, "conditioning": ["41", 0]}, "class_type": "FluxGuidance"},
    "48": {"inputs": {"conditioning": ["6", 0]}, "class_type": "ConditioningZeroOut"},
    "110": {"inputs": {"width": 64, "height": 64, "batch_size": 1}, "class_type": "EmptySD3LatentImage"},
    "31": {"inputs": {"seed": 1058487910949722, "steps": 2, "cfg": 1, "sampler_name": "euler",
                      "scheduler": "simple", "denoise": 1, "model": ["116", 0], "positive": ["35", 0],
                      "negative": ["48", 0], "latent_image": ["110", 0]}, "class_type": "KSampler"},
    "8": {"inputs": {"samples": ["31", 0], "vae": ["30", 2]}, "class_type": "VAEDecode"},
    "9": {"inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}, "class_type": "SaveImage"},
}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("uso-home")
    models = home / "models"
    tiny_uso.make_template_files(models, seed=3)
    clip_vision.make_tiny_siglip_vision(models / "clip_vision" / tiny_flux.SIGLIP, hidden=tiny_flux.SIGLIP_WIDTH,
                                        layers=tiny_flux.SIGLIP_LAYERS, seed=3)
    dev = tiny_flux.make_tiny_flux(home / "scratch", seed=3)["diffusion_model"]  # the LoRA's shapes
    tiny_lora.write(models / "loras" / LORA, tiny_lora.lora_for(dev, "dotted:diffusion_model.", 5), torch.bfloat16)
    (home / "input").mkdir(parents=True, exist_ok=True)
    astronaut = Image.open(SHARED / "data" / "astronaut.png").convert("RGB")
    shutil.copy(SHARED / "data" / "astronaut.png", home / "input" / "subject.png")
    astronaut.resize((96, 80)).save(home / "input" / "style_a.png")
    astronaut.transpose(Image.Transpose.ROTATE_90).save(home / "input" / "style_b.png")
    mesh = Mesh(home, stages=("imaging", "diffusion"))
    try:
        yield mesh.start()
    finally:
        mesh.stop()



def test_uso_template_graph_reruns_identically_and_the_style_references_drive_it(mesh: Mesh) -> None:
    first = assert_reruns_identically(mesh, USO)
    image = png_pixels(first)
    assert image.shape == (64, 64, 3) and image.std() > 0
    unstyled = copy.deepcopy(USO)  # the template as shipped: both USOStyleReference subgraphs bypassed
    unstyled["31"]["inputs"]["model"] = ["43", 0]
    plain = png_pixels(mesh.run_output(unstyled))
    assert not np.array_equal(plain, image)
    one = copy.deepcopy(USO)  # the first reference alone: the second one's tokens are missing
    one["31"]["inputs"]["model"] = ["54", 0]
    assert not np.array_equal(png_pixels(mesh.run_output(one)), image)
    # the same two references in the other order: every text token sits at position ids zero, so attention
    # sees the same set of keys and the image is the same up to rounding (ComfyUI's order is kept anyway)
    swapped = copy.deepcopy(USO)
    swapped["54"]["inputs"]["clip_vision_output"] = ["115", 0]
    swapped["116"]["inputs"]["clip_vision_output"] = ["52", 0]
    difference = np.abs(png_pixels(mesh.run_output(swapped)).astype(int) - image.astype(int))
    assert difference.max() <= 1  # the keys' sums may run in another order


def test_a_projector_on_a_model_patch_node_of_another_kind_is_refused(mesh: Mesh) -> None:
    wrong = copy.deepcopy(USO)
    wrong["54"] = {"inputs": {"model": ["43", 0], "model_patch": ["39", 0], "vae": ["30", 2], "image": ["53", 0],
                              "strength": 1.0}, "class_type": "QwenImageDiffsynthControlnet"}
    job = mesh.wait(mesh.submit(wrong))
    assert job["status"] == "failed"
    assert "USO style projector" in str(job["error"])
