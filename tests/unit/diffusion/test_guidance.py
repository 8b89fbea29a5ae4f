"""CFG, parameterisations, batching of contexts of different lengths, SDXL size embedding (§3.6, §4.2, §4.3)."""

from __future__ import annotations

import math

import pytest
import torch

from comfymesh.diffusion.latents.formats import SD15
from comfymesh.diffusion.latents.previews import latent_to_rgb
from comfymesh.diffusion.sampling.guidance import CondEntry, GuidedDenoiser
from comfymesh.diffusion.sampling.ksampler import sdxl_y, size_embedding
from comfymesh.diffusion.sampling.model_sampling import ModelSampling


class ToyUNet:
    """Output depends on the mean of its context, so CFG mixing is visible; records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        self.calls.append((x.shape[0], ctx.shape[1]))
        return 0.5 * x + ctx.mean(dim=(1, 2)).reshape(-1, 1, 1, 1) + t.reshape(-1, 1, 1, 1) * 1e-3


def _entry(value: float, tokens: int = 77) -> CondEntry:
    return CondEntry(torch.full((1, tokens, 8), value))


def test_cfg_formula_eps() -> None:
    unet, ms = ToyUNet(), ModelSampling()
    x, sigma = torch.randn(2, 4, 3, 3), torch.tensor(2.5)
    den = GuidedDenoiser(unet, ms, "eps", [_entry(1.0)], [_entry(-1.0)], 7.5, torch.float32)
    out = den(x, sigma)
    t = float(ms.timestep(sigma))
    x_in = x / math.sqrt(2.5**2 + 1)
    d_pos = x - (0.5 * x_in + 1.0 + t * 1e-3) * 2.5
    d_neg = x - (0.5 * x_in - 1.0 + t * 1e-3) * 2.5
    assert torch.allclose(out, d_neg + 7.5 * (d_pos - d_neg), atol=1e-4)
    assert unet.calls == [(4, 77)]  # one batched call [negative; positive]


def test_v_prediction() -> None:
    ms = ModelSampling()
    x, sigma = torch.randn(1, 4, 2, 2), torch.tensor(3.0)
    den = GuidedDenoiser(lambda xi, t, c, y: torch.ones_like(xi), ms, "v", [_entry(0.0)], [], 1.0, torch.float32)
    assert torch.allclose(den(x, sigma), x / 10 - 3.0 / math.sqrt(10))


def test_cfg_one_skips_negative() -> None:
    unet = ToyUNet()
    den = GuidedDenoiser(unet, ModelSampling(), "eps", [_entry(1.0)], [_entry(-1.0)], 1.0, torch.float32)
    den(torch.randn(1, 4, 2, 2), torch.tensor(1.0))
    assert unet.calls == [(1, 77)]


def test_tiled_lengths_match_separate_calls() -> None:
    ms = ModelSampling()
    x, sigma = torch.randn(1, 4, 2, 2), torch.tensor(1.5)
    pos, neg = _entry(0.3, 154), _entry(-0.2, 77)
    batched_unet = ToyUNet()
    batched = GuidedDenoiser(batched_unet, ms, "eps", [pos], [neg], 4.0, torch.float32)(x, sigma)
    assert batched_unet.calls == [(2, 154)]
    far_unet = ToyUNet()
    GuidedDenoiser(far_unet, ms, "eps", [_entry(0.3, 77 * 5)], [neg], 4.0, torch.float32)(x, sigma)
    assert far_unet.calls == [(1, 77), (1, 385)]  # 5× the shorter: separate calls
    assert torch.allclose(batched, GuidedDenoiser(ToyUNet(), ms, "eps", [pos], [_entry(-0.2, 154)], 4.0,
                                                   torch.float32)(x, sigma))


def test_combined_entries_are_averaged() -> None:
    den = GuidedDenoiser(ToyUNet(), ModelSampling(), "eps", [_entry(1.0), _entry(3.0)], [], 1.0, torch.float32)
    single = GuidedDenoiser(ToyUNet(), ModelSampling(), "eps", [_entry(2.0)], [], 1.0, torch.float32)
    x, s = torch.randn(1, 4, 2, 2), torch.tensor(0.7)
    assert torch.allclose(den(x, s), single(x, s), atol=1e-6)


def test_size_embedding_cos_first() -> None:
    e = size_embedding(1024.0)
    k = torch.arange(128, dtype=torch.float64)
    f = torch.exp(-math.log(10000) * k / 128)
    assert torch.allclose(e.double(), torch.cat([torch.cos(1024 * f), torch.sin(1024 * f)]), atol=1e-4)


def test_sdxl_y_order_and_defaults() -> None:
    pooled = torch.arange(4, dtype=torch.float32)[None]
    y = sdxl_y(pooled, {}, (96, 128))
    assert y.shape == (1, 4 + 6 * 256)
    assert torch.equal(y[0, :4], pooled[0])
    expected = [768, 1024, 0, 0, 768, 1024]  # height, width, crop_h, crop_w, target_h, target_w
    for i, v in enumerate(expected):
        assert torch.equal(y[0, 4 + 256 * i: 4 + 256 * (i + 1)], size_embedding(v))


def test_latent2rgb() -> None:
    d = torch.zeros(1, 4, 2, 3)
    d[0, 0] = 1.0
    rgb = latent_to_rgb(d, SD15)
    assert rgb.shape == (2, 3, 3)
    assert rgb[0, 0].tolist() == [int((0.3512 + 1) / 2 * 255), int((0.2297 + 1) / 2 * 255),
                                  int((0.3227 + 1) / 2 * 255)]


@pytest.mark.parametrize("fam", ["sd1", "sdxl"])
def test_latent_format_scale(fam: str) -> None:
    from comfymesh.diffusion.latents.formats import for_family

    assert for_family(fam).scale_factor == (0.13025 if fam == "sdxl" else 0.18215)
