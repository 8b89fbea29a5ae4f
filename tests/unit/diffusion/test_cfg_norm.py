"""CFGNorm (a post-CFG patch on the MODEL handle) against ComfyUI's formula, applied by the sampler; and
ManualSigmas's parsing of a string of numbers."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from comfymesh.contracts.errors import NodeInputError
from comfymesh.diffusion.models.cache import get_model_cache
from comfymesh.diffusion.nodes import nodes
from comfymesh.diffusion.nodes.handles import checkpoint_of
from comfymesh.diffusion.nodes.model_patches import apply_model_sampling
from comfymesh.diffusion.sampling.guidance import GuidedDenoiser
from comfymesh.diffusion.sampling.ksampler import cond_entries
from comfymesh.diffusion.sampling.post_cfg import cfg_norm
from comfymesh.stage.node import NodeContext


def run(ctx: NodeContext, name: str, **inputs: Any) -> Any:
    return nodes.impls[name](ctx, **inputs)[0]


def test_cfg_norm_is_comfyuis_per_pixel_channel_norm_rescale() -> None:
    g = torch.Generator().manual_seed(0)
    cond, denoised = torch.randn(2, 4, 3, 5, generator=g), 3 * torch.randn(2, 4, 3, 5, generator=g)
    out = cfg_norm(cond, denoised, 0.9)
    for b in range(2):
        for y in range(3):
            for x in range(5):
                ratio = min(1.0, float(cond[b, :, y, x].norm() / (denoised[b, :, y, x].norm() + 1e-8)))
                torch.testing.assert_close(out[b, :, y, x], denoised[b, :, y, x] * ratio * 0.9)


def test_the_guided_denoiser_applies_the_patch_after_cfg(node_ctx: NodeContext) -> None:
    model, clip, _ = nodes.impls["CheckpointLoaderSimple"](node_ctx, ckpt_name="sd15.safetensors")
    patched = run(node_ctx, "CFGNorm", model=run(node_ctx, "CFGNorm", model=model, strength=0.5), strength=2.0)
    assert patched["post_cfg"] == [["cfg_norm", 0.5], ["cfg_norm", 2.0]] and "post_cfg" not in model
    sm = apply_model_sampling(node_ctx, patched, get_model_cache().sampling_model(checkpoint_of(node_ctx, patched)))
    assert len(sm.post_cfg) == 2
    pos = cond_entries(run(node_ctx, "CLIPTextEncode", text="a cat", clip=clip), sm, (8, 8), "positive")
    neg = cond_entries(run(node_ctx, "CLIPTextEncode", text="", clip=clip), sm, (8, 8), "negative")
    x, sigma = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([2.0])
    with torch.no_grad():
        plain = GuidedDenoiser(sm.unet, sm.sampling, sm.prediction, pos, neg, 4.0, sm.dtype)(x, sigma)
        cond = GuidedDenoiser(sm.unet, sm.sampling, sm.prediction, pos, [], 1.0, sm.dtype)(x, sigma)
        guided = GuidedDenoiser(sm.unet, sm.sampling, sm.prediction, pos, neg, 4.0, sm.dtype)
        guided.post_cfg = sm.post_cfg
        torch.testing.assert_close(guided(x, sigma), cfg_norm(cond, cfg_norm(cond, plain, 0.5), 2.0))


def test_ksampler_samples_with_the_patch(node_ctx: NodeContext) -> None:
    model, clip, _ = nodes.impls["CheckpointLoaderSimple"](node_ctx, ckpt_name="sd15.safetensors")
    positive = run(node_ctx, "CLIPTextEncode", text="a cat", clip=clip)
    negative = run(node_ctx, "CLIPTextEncode", text="", clip=clip)
    latent = run(node_ctx, "EmptyLatentImage", width=64, height=64, batch_size=1)

    def sample(m: dict[str, Any]) -> torch.Tensor:
        return run(node_ctx, "KSampler", model=m, seed=1, steps=2, cfg=5.0, sampler_name="euler", scheduler="normal",
                   positive=positive, negative=negative, latent_image=latent, denoise=1.0)["samples"]

    plain = sample(model)
    assert not torch.allclose(sample(run(node_ctx, "CFGNorm", model=model, strength=1.0)), plain)
    # strength 0 predicts x0 = 0 at every step, so euler walks x to σ_last / σ_0 · x = 0 (up to rounding)
    zeroed = sample(run(node_ctx, "CFGNorm", model=model, strength=0.0))
    torch.testing.assert_close(zeroed, torch.zeros_like(zeroed), atol=1e-5, rtol=0)


def test_manual_sigmas_reads_every_number_as_comfyui_does(node_ctx: NodeContext) -> None:
    sigmas = run(node_ctx, "ManualSigmas", sigmas="14.61, 7.5 3;1,.5 0")
    assert sigmas.dtype == torch.float32
    torch.testing.assert_close(sigmas, torch.tensor([14.61, 7.5, 3.0, 1.0, 0.5, 0.0]))
    assert run(node_ctx, "ManualSigmas", sigmas="no numbers").numel() == 0
    # ComfyUI's pattern has no exponent: 1e-3 reads as 1 and -3
    torch.testing.assert_close(run(node_ctx, "ManualSigmas", sigmas="1e-3"), torch.tensor([1.0, -3.0]))
    with pytest.raises(NodeInputError, match="sigmas"):
        run(node_ctx, "ManualSigmas", sigmas="1..5")
