"""FLUX, Chroma and FLUX.2 embed the timestep as ComfyUI does in bf16: from its float32 value (diffusers rounds it
to the model dtype first), and FLUX's guidance rounded as ComfyUI rounds it (scaled by 1000 in the model dtype).

On the GPU bench the difference showed as 26 dB between a compiled and an eager FLUX call: inductor skipped the
rounding eager diffusers did. Here a bf16 call of each family records what its time projection receives, at
σ = 0.637 (×1000 in bf16 rounds to 636) and guidance 3.3 (ComfyUI embeds 3296), on tiny random weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfymesh.config.fast_path import FastPathSettings
from comfymesh.diffusion.families import registry
from comfymesh.diffusion.families.exact_time import ExactTimeProjection, feed
from comfymesh.diffusion.models import tiny_flux, tiny_flux2
from comfymesh.diffusion.models.cache import ModelCache

CPU = torch.device("cpu")
SHAPES = {
    "flux": lambda: tiny_flux.flux_shapes(width=256, head_dim=128, context=32),
    "chroma": lambda: tiny_flux.chroma_shapes(width=256, head_dim=128, hidden=32, layers=2, context=32),
    "flux2": lambda: tiny_flux2.flux2_shapes(guidance=True),
}


@pytest.mark.parametrize("family", sorted(SHAPES))
def test_bf16_call_embeds_the_float32_timestep(family: str, tmp_path: Path) -> None:
    path = tmp_path / f"{family}.safetensors"
    save_file(tiny_flux.random_tensors(SHAPES[family](), 5, torch.float32), str(path))
    cache = ModelCache(budget_bytes=2**30, device=CPU, fast=FastPathSettings(fast_path=False))
    module, rec = cache.unet_file(path).unet()
    fam = registry.get(rec.family)
    assert fam is not None and fam.name == family
    half = module.to(torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    sm16 = fam.sampling_model(half, rec, CPU)
    x = torch.randn(1, sm16.latent_format.channels, 8, 8, generator=g)
    ctx = torch.randn(1, 6, sm16.context_dim, generator=g)
    y = None if sm16.adm is None else torch.randn(1, sm16.adm, generator=g)
    if family == "flux":
        y[:, -1] = 3.3  # type: ignore[index]  # guidance, not a bf16 number either
    elif family == "flux2":
        y = torch.tensor([[3.3]])
    t = torch.tensor([0.637])
    seen: list[torch.Tensor] = []

    def record(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen.append(args[0].clone())

    with torch.no_grad():
        # the sampler hands the model its conditioning in the model dtype (guidance.py), so y arrives in bf16
        y16 = None if y is None else y.bfloat16()
        sm16.unet(x.bfloat16(), t, ctx.bfloat16(), y16)  # installs the wrapper on first use
        [proj] = [m for m in half.modules() if isinstance(m, ExactTimeProjection)]
        hook = proj.proj.register_forward_pre_hook(record)
        ours = sm16.unet(x.bfloat16(), t, ctx.bfloat16(), y16)
        hook.remove()
        assert proj.pending == []  # every fed value was taken
    assert seen[0].dtype == torch.float32 and torch.equal(seen[0], t * 1000)
    if family != "chroma":
        assert seen[1].dtype == torch.float32
        assert float(seen[1]) == float(torch.tensor(3.3).bfloat16() * 1000) == 3296.0
    assert torch.isfinite(ours).all() and ours.shape == x.shape


def test_feed_skips_none_and_falls_back_on_other_shapes() -> None:
    class Embedder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.time_proj = torch.nn.Identity()

    emb = Embedder()
    feed(emb, torch.tensor([700.0]), None)
    proj = emb.time_proj
    assert isinstance(proj, ExactTimeProjection) and len(proj.pending) == 1
    assert torch.equal(proj(torch.tensor([1.0, 2.0])), torch.tensor([1.0, 2.0]))  # shape differs: its argument
    assert torch.equal(proj(torch.tensor([699.0])), torch.tensor([700.0])) and proj.pending == []
    feed(emb, torch.tensor([1.5]))
    assert emb.time_proj is proj and len(proj.pending) == 1  # wrapped once; a new feed replaces the old
