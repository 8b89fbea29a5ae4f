"""FLUX.2's nodes as ComfyUI 0.8.0 declares them (golden flux2_object_info.json, also equal to 0.8.0's own
/object_info dump), EmptyFlux2LatentImage's 128-channel latent at a sixteenth of the size, and Flux2Scheduler's
σ values (recorded from ComfyUI 0.8.0's get_schedule, which our schedule equals bit for bit)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from comfymesh.diffusion.nodes import nodes
from comfymesh.diffusion.sampling.flux2_schedule import empirical_mu, flux2_sigmas
from comfymesh.stage.node import NodeContext

GOLDEN = Path(__file__).parents[2] / "golden" / "flux2_object_info.json"


def run(ctx: NodeContext, name: str, **inputs: Any) -> tuple[Any, ...]:
    return nodes.impls[name](ctx, **inputs)


def test_object_info_equals_comfyui_080() -> None:
    golden = json.loads(GOLDEN.read_text())
    golden.pop("_about")
    assert {name: nodes.schemas[name].object_info() for name in golden} == golden


def test_empty_latent_is_128_channels_at_a_sixteenth(node_ctx: NodeContext) -> None:
    (latent,) = run(node_ctx, "EmptyFlux2LatentImage", width=1248, height=832, batch_size=2)
    assert latent["samples"].shape == (2, 128, 52, 78) and not latent["samples"].any()
    (odd,) = run(node_ctx, "EmptyFlux2LatentImage", width=72, height=40)
    assert odd["samples"].shape == (1, 128, 2, 4)


def test_scheduler_sigmas_of_the_templates(node_ctx: NodeContext) -> None:
    # Klein distilled: 4 steps at 1024² (4096 tokens)
    (sigmas,) = run(node_ctx, "Flux2Scheduler", steps=4, width=1024, height=1024)
    assert sigmas.dtype == torch.float32 and sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert sigmas.tolist() == pytest.approx([1.0, 0.9673840403556824, 0.9081438779830933, 0.7671999335289001, 0.0],
                                            abs=1e-7)
    # FLUX.2 Dev's image_flux2: 20 steps at 1248×832 (4056 tokens)
    (dev,) = run(node_ctx, "Flux2Scheduler", steps=20, width=1248, height=832)
    assert len(dev) == 21 and dev[:4].tolist() == pytest.approx(
        [1.0, 0.9941694140434265, 0.987770140171051, 0.9807149767875671], abs=1e-7)
    assert bool((dev[1:] < dev[:-1]).all())


def test_mu_is_the_two_line_fit() -> None:
    assert empirical_mu(4096, 4) == pytest.approx(2.291179894115571, abs=1e-12)
    assert empirical_mu(5000, 20) == pytest.approx(0.00016927 * 5000 + 0.45666666)  # past 4300 tokens: no step term
    mu = empirical_mu(1024, 7)
    t = torch.linspace(1, 0, 8)
    expected = math.exp(mu) / (math.exp(mu) + (1 / t - 1))
    assert torch.equal(flux2_sigmas(7, 512, 512), expected)
