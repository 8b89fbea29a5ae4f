"""LoRA on a flow family through the mesh: FLUX.1 dev's custom-sampler graph with LoraLoaderModelOnly between
UNETLoader and ModelSamplingFlux (tiny files, 64×64, 2 steps), and LoraLoader on flux_schnell's fp8 all-in-one
checkpoint. Strength 0 gives the base image's pixels, strength 1 another image that reruns byte-identical,
a kohya file and a PEFT file of the same weights give the same image, and two LoRAs chain."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from comfymesh.diffusion.families import flux
from comfymesh.diffusion.models import tiny_flux, tiny_lora
from comfymesh.diffusion.models.tensor_source import TensorSource
from tests.integration.test_flux_mesh import DEV, SCHNELL_CHECKPOINT
from tests.mesh import Mesh, assert_reruns_identically, png_pixels

KOHYA, PEFT, OTHER, SCHNELL = "flux_style_kohya.safetensors", "flux_style_peft.safetensors", \
    "flux_other.safetensors", "flux_schnell_lora.safetensors"


def with_loras(*loras: tuple[str, float]) -> dict[str, Any]:
    """DEV with LoraLoaderModelOnly nodes chained after the UNETLoader (node 12)."""
    prompt = copy.deepcopy(DEV)
    source = ["12", 0]
    for i, (name, strength) in enumerate(loras):
        node = str(100 + i)
        prompt[node] = {"inputs": {"lora_name": name, "strength_model": strength, "model": source},
                        "class_type": "LoraLoaderModelOnly"}
        source = [node, 0]
    prompt["30"]["inputs"]["model"] = source
    prompt["17"]["inputs"]["model"] = source
    return prompt


def _write_loras(models: Any, unet: Any, checkpoint: Any) -> None:
    src = TensorSource(unet)
    layout = flux.parse_flux(src)
    assert layout is not None
    linears = tiny_lora.linear_keys(src)
    kohya = tiny_lora.kohya_lora(linears, seed=11, scale=0.2)
    kmap = flux.lora_key_map(src, layout.prefix, layout.width)
    tiny_lora.write(models / "loras" / KOHYA, kohya)
    tiny_lora.write(models / "loras" / PEFT, tiny_lora.peft_from_kohya(kohya, linears, kmap))
    tiny_lora.write(models / "loras" / OTHER, tiny_lora.kohya_lora(linears, seed=12, scale=0.2))
    ckpt_linears = tiny_lora.linear_keys(TensorSource(checkpoint), "model.diffusion_model.")
    tiny_lora.write(models / "loras" / SCHNELL, tiny_lora.kohya_lora(ckpt_linears, seed=13, scale=0.2))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("flux-lora-home")
    paths = tiny_flux.make_tiny_flux(home / "models", seed=3)
    ckpt = tiny_flux.make_tiny_flux_checkpoint(home / "models" / "checkpoints" / tiny_flux.CHECKPOINT, seed=4)
    _write_loras(home / "models", paths["diffusion_model"], ckpt)
    mesh = Mesh(home, stages=("imaging", "diffusion"))
    try:
        yield mesh.start()
    finally:
        mesh.stop()


def test_flux_lora_model_only(mesh: Mesh) -> None:
    base = png_pixels(mesh.run_output(DEV))
    assert np.array_equal(png_pixels(mesh.run_output(with_loras((KOHYA, 0.0)))), base)
    image = png_pixels(assert_reruns_identically(mesh, with_loras((KOHYA, 1.0))))
    assert image.shape == (64, 64, 3) and not np.array_equal(image, base)
    # the same weights in diffusers/PEFT names (AI-toolkit's form) give the same image
    assert np.array_equal(png_pixels(mesh.run_output(with_loras((PEFT, 1.0)))), image)
    # a second LoRA chained changes it again; strength 0 on the second leaves the first's image
    chained = png_pixels(mesh.run_output(with_loras((KOHYA, 1.0), (OTHER, 0.7))))
    assert not np.array_equal(chained, image)
    assert np.array_equal(png_pixels(mesh.run_output(with_loras((KOHYA, 1.0), (OTHER, 0.0)))), image)


def test_lora_loader_on_the_fp8_checkpoint(mesh: Mesh) -> None:
    base = png_pixels(mesh.run_output(SCHNELL_CHECKPOINT))
    prompt = copy.deepcopy(SCHNELL_CHECKPOINT)
    prompt["40"] = {"inputs": {"lora_name": SCHNELL, "strength_model": 1.0, "strength_clip": 1.0,
                               "model": ["30", 0], "clip": ["30", 1]}, "class_type": "LoraLoader"}
    prompt["31"]["inputs"]["model"] = ["40", 0]
    for node in ("6", "33"):
        prompt[node]["inputs"]["clip"] = ["40", 1]
    first = assert_reruns_identically(mesh, prompt)
    assert not np.array_equal(png_pixels(first), base)
