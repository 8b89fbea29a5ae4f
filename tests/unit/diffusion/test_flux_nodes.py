"""FLUX's conditioning nodes and ReferenceLatent as 0.8.0 declares them, the extras they set, FLUX's model
sampling (ModelSamplingFlux's μ-shifted 10 000-entry table) against its formula, and T5 prompts padded as
ComfyUI's FLUX tokenizer pads them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from comfymesh.diffusion.nodes import nodes
from comfymesh.diffusion.nodes.model_patches import flux_shift
from comfymesh.diffusion.sampling.flux_sampling import FluxModelSampling
from comfymesh.diffusion.sampling.schedulers import calculate_sigmas
from comfymesh.diffusion.text.t5 import t5_tokens
from comfymesh.imaging.flux_nodes import kontext_size
from comfymesh.imaging.nodes import nodes as imaging_nodes
from comfymesh.stage.node import NodeContext

GOLDEN = Path(__file__).parents[2] / "golden" / "flux_object_info.json"


def run(ctx: NodeContext, name: str, **inputs: Any) -> tuple[Any, ...]:
    return nodes.impls[name](ctx, **inputs)


def test_object_info_equals_comfyui_080() -> None:
    golden = json.loads(GOLDEN.read_text())
    golden.pop("_about")
    schemas = {**imaging_nodes.schemas, **nodes.schemas}  # FluxKontextImageScale is an imaging node
    assert {name: schemas[name].object_info() for name in golden} == golden


def test_kontext_sizes_are_the_nearest_aspect() -> None:
    assert kontext_size(64, 64) == (1024, 1024)
    assert kontext_size(1000, 600) == (1328, 800)  # 5:3 → 1.66
    assert kontext_size(600, 1000) == (800, 1328)
    assert kontext_size(4000, 100) == (1568, 672)  # past the list: its widest


def test_kontext_scale_crops_to_the_aspect_then_resizes(node_ctx: NodeContext) -> None:
    image = np.random.default_rng(0).random((1, 60, 100, 3), dtype=np.float32)
    out, = imaging_nodes.impls["FluxKontextImageScale"](node_ctx, image=image)
    assert out.shape == (1, 800, 1328, 3) and out.dtype == np.float32


def test_nodes_set_the_extras_flux_reads(node_ctx: NodeContext) -> None:
    cond: list[list[Any]] = [[torch.zeros(1, 4, 8), {"pooled_output": torch.ones(1, 8)}], [torch.ones(1, 4, 8), {}]]
    (guided,) = run(node_ctx, "FluxGuidance", conditioning=cond, guidance=2.5)
    assert [e[1]["guidance"] for e in guided] == [2.5, 2.5]
    assert "guidance" not in cond[0][1]  # the input is left as it was
    (off,) = run(node_ctx, "FluxDisableGuidance", conditioning=guided)
    assert [e[1]["guidance"] for e in off] == [None, None]
    a, b = torch.randn(1, 16, 4, 4), torch.randn(1, 16, 2, 6)
    (one,) = run(node_ctx, "ReferenceLatent", conditioning=cond, latent={"samples": a})
    (two,) = run(node_ctx, "ReferenceLatent", conditioning=one, latent={"samples": b})
    assert [r.shape for r in two[0][1]["reference_latents"]] == [a.shape, b.shape]
    assert len(one[0][1]["reference_latents"]) == 1
    (same,) = run(node_ctx, "ReferenceLatent", conditioning=cond, latent=None)
    assert same is cond
    (uxo,) = run(node_ctx, "FluxKontextMultiReferenceLatentMethod", conditioning=two,
                 reference_latents_method="uxo/uno")
    assert uxo[1][1]["reference_latents_method"] == "uxo"


def comfy_sigma(mu: float, t: float) -> float:
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1))


def test_flux_table_is_the_exponential_shift() -> None:
    ms = FluxModelSampling(1.15)
    assert ms.sigmas.shape == (10_000,)
    for i in (0, 1, 4999, 9998, 9999):
        assert float(ms.sigmas[i]) == pytest.approx(comfy_sigma(1.15, (i + 1) / 10_000), rel=1e-6)
    assert float(ms.sigma_max) == 1.0
    assert float(ms.timestep(torch.tensor(0.4))) == pytest.approx(0.4)  # the model takes σ itself
    assert ms.percent_to_sigma(0.25) == pytest.approx(comfy_sigma(1.15, 0.75), rel=1e-6)
    assert (ms.percent_to_sigma(0.0), ms.percent_to_sigma(1.0)) == (1.0, 0.0)


def test_model_sampling_flux_shift_at_the_template_sizes() -> None:
    # μ is linear in the token count (px / 256): base at 256 tokens (256²), max at 4096 (1024²)
    assert flux_shift(1.15, 0.5, 1024, 1024) == pytest.approx(1.15)
    assert flux_shift(1.15, 0.5, 256, 256) == pytest.approx(0.5)
    assert flux_shift(1.15, 0.5, 512, 512) == pytest.approx(0.5 + (1024 - 256) * 0.65 / 3840)
    assert flux_shift(1.15, 0.5, 768, 1024) == pytest.approx(0.5 + (3072 - 256) * 0.65 / 3840)
    # the simple schedule of 4 steps picks every 2500th table entry from the top
    sig = calculate_sigmas(FluxModelSampling(1.15), "simple", 4)
    expected = [comfy_sigma(1.15, t) for t in (1.0, 0.75, 0.5, 0.25)] + [0.0]
    assert sig.tolist() == pytest.approx(expected, rel=1e-6)


@pytest.mark.usefixtures("t5_tokenizer_ready")
def test_t5_prompt_is_padded_to_256_after_its_end_token() -> None:
    ids = t5_tokens("a photo of a cat", 256)
    # T5's published ids: ▁ 3, a 9, ▁photo 1202, ▁of 13, ▁cat 1712, </s> 1, <pad> 0
    assert ids[:8] == [3, 9, 1202, 13, 3, 9, 1712, 1]
    assert len(ids) == 256 and set(ids[8:]) == {0}
    long = t5_tokens("word " * 300, 256)
    assert len(long) == 301 and long[-1] == 1  # never truncated
