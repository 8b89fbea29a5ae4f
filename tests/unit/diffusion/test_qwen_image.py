"""Qwen-Image's diffusion model, called as ComfyUI calls it: recognised from shapes at any size (and its 2511 and
Layered variants), the same numbers as diffusers' own forward where ComfyUI and diffusers agree (even latent
sizes, no references), ComfyUI's centred RoPE positions and reference-latent methods where they differ, and
ModelSamplingFlux's σ table with one Euler step worked out from the formulas."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.families import qwen_image as q
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.models.tiny_qwen_image import qwen_image_shapes, tensors
from comfymesh.diffusion.sampling.flux_sampling import FluxModelSampling
from comfymesh.diffusion.sampling.guidance import CondEntry, GuidedDenoiser
from comfymesh.diffusion.sampling.samplers import SAMPLERS, SamplerEnv
from comfymesh.diffusion.sampling.schedulers import calculate_sigmas

CPU = torch.device("cpu")


def _write(tmp_path: Path, name: str = "q.safetensors", prefix: str = "", seed: int = 0,
           **shape_args: Any) -> TensorSource:
    weights = tensors(qwen_image_shapes(**shape_args), seed, torch.float32)
    path = tmp_path / name
    save_file({prefix + k: v for k, v in weights.items()}, str(path))
    return TensorSource(path)


def _model(tmp_path: Path, **shape_args: Any) -> torch.nn.Module:
    src = _write(tmp_path, **shape_args)
    layout = q.parse_qwen_image(src)
    assert layout is not None
    return q.load_qwen_image(src, layout, CPU)


@pytest.mark.parametrize(("dim", "heads", "layers", "text_dim"), [(64, 2, 2, 32), (96, 3, 3, 48)])
def test_layout_read_from_shapes_at_any_size(tmp_path: Path, dim: int, heads: int, layers: int, text_dim: int) -> None:
    src = _write(tmp_path, prefix="model.diffusion_model.", dim=dim, heads=heads, layers=layers, text_dim=text_dim)
    layout = q.parse_qwen_image(src)
    assert layout is not None
    assert (layout.prefix, layout.dim, layout.n_heads, layout.head_dim, layout.n_layers, layout.text_dim) == (
        "model.diffusion_model.", dim, heads, dim // heads, layers, text_dim)
    assert layout.latent_channels == layout.out_channels == 16
    assert layout.axes_dims == (dim // heads // 8, dim // heads * 7 // 16, dim // heads * 7 // 16)
    assert sum(layout.axes_dims) == layout.head_dim
    assert not layout.timestep_zero and not layout.additional_t_cond


def test_full_size_head_splits_as_comfyui() -> None:
    layout = q.QwenImageLayout("", 3072, 128, 24, 60, 16, 16, 3584, False, False)
    assert layout.axes_dims == (16, 56, 56)


def test_variants_recognised_by_their_markers(tmp_path: Path) -> None:
    edit2511 = q.parse_qwen_image(_write(tmp_path, "a.safetensors", variant="2511"))
    layered = q.parse_qwen_image(_write(tmp_path, "b.safetensors", variant="layered"))
    assert edit2511 is not None and edit2511.timestep_zero and edit2511.variant == "Edit 2511"
    assert layered is not None and layered.additional_t_cond and layered.variant == "Layered"


def test_other_files_are_not_qwen_image(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"img_in.weight": torch.zeros(4, 4)}, str(path))
    assert q.parse_qwen_image(TensorSource(path)) is None


def test_unbuildable_head_width_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot build"):
        q.parse_qwen_image(_write(tmp_path, dim=60, heads=2))


def _pack(x: torch.Tensor) -> torch.Tensor:
    # diffusers' pipeline packing: [B, C, H, W] → [B, H/2·W/2, C·4], channels before the 2×2 patch
    b, c, h, w = x.shape
    return x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h // 2 * w // 2, c * 4)


def test_same_numbers_as_diffusers_forward_where_they_agree(tmp_path: Path) -> None:
    from diffusers import QwenImageTransformer2DModel

    model = _model(tmp_path)
    reference: Any = QwenImageTransformer2DModel(**q.model_config(q.parse_qwen_image(_write(tmp_path))))  # type: ignore[arg-type]
    reference.load_state_dict(model.state_dict(), strict=False)
    gen = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(1, 16, 8, 12, generator=gen), torch.randn(1, 7, 32, generator=gen)
    sigma = torch.tensor([0.7])
    with torch.no_grad():
        ours = q.qwen_image_forward(model, x, sigma, ctx)
        theirs = reference(hidden_states=_pack(x), encoder_hidden_states=ctx, timestep=sigma,
                           img_shapes=[[(1, 4, 6)]], return_dict=False)[0]
    assert ours.shape == x.shape
    assert torch.allclose(_pack(ours), theirs, atol=1e-5)
    # a 5-D latent of one frame gives the same numbers, shaped 5-D
    assert torch.equal(q.qwen_image_forward(model, x.unsqueeze(2), sigma, ctx).squeeze(2), ours)


def test_positions_are_centred_as_comfyui_centres_them() -> None:
    # ComfyUI: rows arange(h_len) − h_len//2, columns likewise; odd sizes pad circularly to whole patches
    tokens, ids = q.patchify(torch.zeros(1, 16, 1, 6, 10))
    assert tokens.shape == (1, 15, 64)
    assert sorted({float(r) for r in ids[:, 1]}) == [-1.0, 0.0, 1.0]
    assert sorted({float(c) for c in ids[:, 2]}) == [-2.0, -1.0, 0.0, 1.0, 2.0]
    assert set(ids[:, 0].tolist()) == {0.0}
    tokens, ids = q.patchify(torch.zeros(1, 16, 1, 5, 5), index=2.0)
    assert tokens.shape == (1, 9, 64)  # 5 → 6 rows and columns, three patches each
    assert set(ids[:, 0].tolist()) == {2.0}
    # several frames (Layered) count 0 … T − 1
    _, ids = q.patchify(torch.zeros(1, 16, 3, 2, 2))
    assert ids[:, 0].tolist() == [0.0, 1.0, 2.0]


def test_rope_angles_are_position_times_theta_powers() -> None:
    ids = torch.tensor([[1.0, 2.0, -3.0]], dtype=torch.float64)
    freqs = q.rope(ids, (4, 6, 6), torch.float32, CPU)
    assert freqs.shape == (1, 8)
    expected = [1.0 * 10_000 ** (-k / 4) for k in (0, 2)] + [2.0 * 10_000 ** (-k / 6) for k in (0, 2, 4)] + [
        -3.0 * 10_000 ** (-k / 6) for k in (0, 2, 4)]
    assert torch.allclose(freqs.angle().double(), torch.tensor([math.atan2(math.sin(a), math.cos(a)) for a in expected],
                                                               dtype=torch.float64), atol=1e-6)


def test_reference_methods_place_references_as_comfyui() -> None:
    refs = [torch.zeros(1, 16, 1, 4, 8), torch.zeros(1, 16, 1, 6, 2)]
    assert q._ref_positions(refs, "index") == [(1.0, 0, 0), (2.0, 0, 0)]
    assert q._ref_positions(refs, "index_timestep_zero") == [(1.0, 0, 0), (2.0, 0, 0)]
    assert q._ref_positions(refs, "negative_index") == [(-1.0, 0, 0), (-2.0, 0, 0)]
    # offset: frame 1 for all; the second goes below the first (6 + 4 rows is not more than 2 + 8 columns)
    assert q._ref_positions(refs, "offset") == [(1.0, 0, 0), (1.0, 4, 0)]


def test_references_join_the_sequence_but_not_the_output(tmp_path: Path) -> None:
    model = _model(tmp_path)
    gen = torch.Generator().manual_seed(2)
    x, ctx = torch.randn(1, 16, 1, 4, 4, generator=gen), torch.randn(1, 5, 32, generator=gen)
    ref = torch.randn(1, 16, 1, 6, 4, generator=gen)
    with torch.no_grad():
        plain = q.qwen_image_forward(model, x, torch.tensor([0.5]), ctx)
        edited = q.qwen_image_forward(model, x, torch.tensor([0.5]), ctx, refs=[ref])
        negative = q.qwen_image_forward(model, x, torch.tensor([0.5]), ctx, refs=[ref], ref_method="negative_index")
    assert edited.shape == plain.shape
    assert not torch.allclose(edited, plain)
    assert not torch.allclose(edited, negative)  # the reference's frame index reaches the output
    # a method ComfyUI does not name (FLUX's uxo) places references as offset does
    with torch.no_grad():
        assert torch.equal(q.qwen_image_forward(model, x, torch.tensor([0.5]), ctx, refs=[ref], ref_method="uxo"),
                           q.qwen_image_forward(model, x, torch.tensor([0.5]), ctx, refs=[ref], ref_method="offset"))


def test_2511_modulates_references_at_timestep_zero(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    base, edit = _model(tmp_path / "a"), _model(tmp_path / "b", variant="2511")
    gen = torch.Generator().manual_seed(3)
    x, ctx = torch.randn(1, 16, 1, 4, 4, generator=gen), torch.randn(1, 5, 32, generator=gen)
    ref = torch.randn(1, 16, 1, 4, 4, generator=gen)
    t = torch.tensor([0.6])
    with torch.no_grad():
        # same weights: without references the marker changes nothing
        assert torch.allclose(q.qwen_image_forward(edit, x, t, ctx), q.qwen_image_forward(base, x, t, ctx), atol=1e-6)
        # with one, its tokens see timestep 0: as `index` except for the modulation
        zero = q.qwen_image_forward(edit, x, t, ctx, refs=[ref])
        index = q.qwen_image_forward(base, x, t, ctx, refs=[ref])
        # the method chosen per call wins over the file's default, either way
        assert torch.allclose(q.qwen_image_forward(base, x, t, ctx, refs=[ref], ref_method="index_timestep_zero"),
                              zero, atol=1e-6)
        assert torch.allclose(q.qwen_image_forward(edit, x, t, ctx, refs=[ref], ref_method="index"), index, atol=1e-6)
    assert not torch.allclose(zero, index, atol=1e-4)
    blocks: Any = base.get_submodule("transformer_blocks")
    assert all(not b.zero_cond_t for b in blocks)  # the model is left as built


def test_layered_adds_its_extra_time_embedding(tmp_path: Path) -> None:
    model = _model(tmp_path, variant="layered")
    x, ctx = torch.randn(1, 16, 3, 4, 4), torch.randn(1, 5, 32)
    with torch.no_grad():
        out = q.qwen_image_forward(model, x, torch.tensor([0.4]), ctx)
    assert out.shape == x.shape


def test_flux_sigma_table_is_the_exponential_shift() -> None:
    ms = FluxModelSampling(1.15)
    assert ms.sigmas.shape == (10_000,)
    for i in (0, 4_999, 9_999):
        t = (i + 1) / 10_000
        assert float(ms.sigmas[i]) == pytest.approx(math.exp(1.15) / (math.exp(1.15) + (1 / t - 1)), rel=1e-6)
    assert float(ms.sigma_max) == pytest.approx(1.0)
    assert torch.equal(ms.timestep(torch.tensor([0.3])), torch.tensor([0.3]))
    assert ms.percent_to_sigma(0.0) == 1.0 and ms.percent_to_sigma(1.0) == 0.0
    assert ms.percent_to_sigma(0.5) == pytest.approx(math.exp(1.15) / (math.exp(1.15) + 1))
    # simple with 2 steps: entries 9999 and 4999 (t = 1 and 0.5)
    sigmas = calculate_sigmas(ms, "simple", 2)
    assert sigmas.tolist() == pytest.approx([1.0, math.exp(1.15) / (math.exp(1.15) + 1), 0.0], rel=1e-6)


def test_one_euler_step_on_the_model(tmp_path: Path) -> None:
    model = _model(tmp_path)
    rec = q.recognition(q.parse_qwen_image(_write(tmp_path)))  # type: ignore[arg-type]
    sm = q.sampling_model(model, rec, CPU)
    assert sm.latent_format.channels == 16 and sm.sampling.shift == pytest.approx(1.15)  # type: ignore[attr-defined]
    ctx = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(4))
    x = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(5))
    denoiser = GuidedDenoiser(sm.unet, sm.sampling, "flow", [CondEntry(ctx)], [], 1.0, torch.float32)
    sigmas = torch.tensor([1.0, 0.6])
    out = SAMPLERS["euler"](denoiser, x, sigmas, SamplerEnv(seed=0))
    with torch.no_grad():
        v = q.qwen_image_forward(model, x, torch.tensor([1.0]), ctx)
    x0 = x - 1.0 * v  # CONST: x0 = x − σ·out
    expected = x + (x - x0) / 1.0 * (0.6 - 1.0)
    assert torch.allclose(out, expected, atol=1e-5)
