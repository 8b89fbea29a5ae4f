"""Chroma from ComfyUI's files: recognised by its distilled guidance layer (not as FLUX), built with every
weight, its modulation index table as ComfyUI computes it, T5-only prompts padded as T5TokenizerOptions asks
(none by default) with weights measured against all-pad tokens, and its discrete-flow sampling."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from comfymesh.diffusion.families import chroma, flux, registry
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.models.tiny_flux import chroma_shapes, flux_shapes, random_tensors, t5_shapes
from comfymesh.diffusion.sampling.flow_sampling import FlowModelSampling
from comfymesh.diffusion.text.t5 import encode_t5, load_t5_file, t5_tokens

CPU = torch.device("cpu")
needs_t5 = pytest.mark.usefixtures("t5_tokenizer_ready")


def write(path: Path, state: dict[str, torch.Tensor]) -> TensorSource:
    save_file(state, str(path))
    return TensorSource(path)


@pytest.fixture(scope="module")
def chroma_file(tmp_path_factory: pytest.TempPathFactory) -> TensorSource:
    state = random_tensors(chroma_shapes(width=128, head_dim=64, depth=2, depth_single=2, hidden=48, layers=3),
                           0, torch.float32)
    return write(tmp_path_factory.mktemp("chroma") / "chroma.safetensors",
                 {f"model.diffusion_model.{k}": v for k, v in state.items()})


def test_recognised_as_chroma_not_flux(chroma_file: TensorSource, tmp_path: Path) -> None:
    layout = chroma.parse_chroma(chroma_file)
    assert layout is not None and flux.parse_flux(chroma_file) is None
    assert (layout.width, layout.head_dim, layout.depth, layout.depth_single) == (128, 64, 2, 2)
    assert (layout.approximator_hidden, layout.approximator_layers, layout.context_dim) == (48, 3, 64)
    found = registry.recognise(chroma_file)
    assert found is not None and found[0] is chroma.FAMILY
    flux_file = write(tmp_path / "flux.safetensors", random_tensors(flux_shapes(width=128, head_dim=64), 0,
                                                                     torch.float32))
    assert chroma.parse_chroma(flux_file) is None


def test_built_with_every_weight_and_comfyui_modulation_indexes(chroma_file: TensorSource) -> None:
    from diffusers import ChromaTransformer2DModel

    layout = chroma.parse_chroma(chroma_file)
    assert layout is not None
    model: Any = chroma.load_chroma(chroma_file, layout, CPU)
    assert model.time_text_embed.mod_proj.shape == (3 * 2 + 12 * 2 + 2, 32)
    # diffusers' own table (built off the meta device) and ComfyUI's timestep_embedding(arange, 32) at 1000·i
    reference: Any = ChromaTransformer2DModel(**chroma.model_config(layout))
    assert torch.allclose(model.time_text_embed.mod_proj, reference.time_text_embed.mod_proj, atol=1e-6)
    i, k = 5, 3
    assert float(model.time_text_embed.mod_proj[i, k]) == pytest.approx(
        math.cos(1000.0 * i * math.exp(-math.log(10000) * k / 16)), abs=1e-5)
    # the file's approximator weights are the model's
    sd = dict(chroma_file.with_prefix("model.diffusion_model."))
    assert torch.equal(model.distilled_guidance_layer.in_proj.weight,
                       sd["model.diffusion_model.distilled_guidance_layer.in_proj.weight"])
    x = torch.randn(1, 16, 6, 10)
    out = chroma.chroma_fn(model)(x, torch.tensor([0.5]), torch.randn(1, 5, 64), None)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_default_sampling_is_flow_shift_1() -> None:
    assert (chroma.SHIFT, chroma.MULTIPLIER) == (1.0, 1.0)
    ms = FlowModelSampling(chroma.SHIFT, chroma.MULTIPLIER)
    assert float(ms.timestep(torch.tensor(0.25))) == pytest.approx(0.25)


@needs_t5
def test_t5_prompts_unpadded_unless_asked(tmp_path: Path) -> None:
    t5 = load_t5_file(write(tmp_path / "t5.safetensors", random_tensors(t5_shapes(), 1, torch.float32)), CPU)
    enc = {"t5": t5}
    (context, extras), = chroma.FAMILY.encode("a photo of a cat", enc, {})
    ids = t5_tokens("a photo of a cat", 1)
    assert extras == {} and context.shape == (1, len(ids), 64)
    assert torch.equal(context, encode_t5(t5, ids))
    (padded, _), = chroma.FAMILY.encode("a photo of a cat", enc, {"t5xxl_min_padding": 3, "t5xxl_min_length": 0})
    assert padded.shape[1] == len(ids) + 3
    (long, _), = chroma.FAMILY.encode("a photo of a cat", enc, {"t5xxl_min_padding": 0, "t5xxl_min_length": 20})
    assert long.shape[1] == 20
    # weights: against the all-pad prompt (PixArt's empty tokens have no end token)
    (weighted, _), = chroma.FAMILY.encode("a (photo:2.0) of a cat", enc, {})
    plain, empty = encode_t5(t5, ids), encode_t5(t5, [0] * len(ids))
    j = 2  # ▁photo
    assert torch.allclose(weighted[0, j], empty[0, j] + 2.0 * (plain[0, j] - empty[0, j]), atol=1e-6)
    assert torch.equal(weighted[0, 0], plain[0, 0])
