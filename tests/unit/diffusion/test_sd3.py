"""SD3 / SD3.5 on their own: the MMDiT recognised from keys and shapes at any size (SD3 medium, SD3.5 large,
SD3.5 medium's MMDiT-X) in the bare and the checkpoint layout, scaled-fp8 weights kept fp8 and scaled per call, the model
called with ComfyUI's conventions (σ·1000 as time, circular padding to whole patches, x0 = x − σ·out), the
SD3 latent format, ComfyUI's default σ table (shift 3) and one Euler step against the formulas, and the
prompt conditioning built as sd3_clip builds it (CLIP-L ‖ CLIP-G padded to 4096, pooled L ‖ G, zeros for what
is missing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.families import sd3
from comfymesh.diffusion.models import tiny_sd3
from comfymesh.diffusion.models.fp8_weights import Fp8Linear
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.sampling.guidance import CondEntry, GuidedDenoiser
from comfymesh.diffusion.sampling.ksampler import cond_entries
from comfymesh.diffusion.sampling.samplers import SAMPLERS, SamplerEnv
from comfymesh.diffusion.sampling.schedulers import calculate_sigmas
from comfymesh.diffusion.text import sd3_text

CPU = torch.device("cpu")


def shifted(shift: float, t: float) -> float:
    return shift * t / (1 + (shift - 1) * t)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_sd3.make_tiny_sd3(tmp_path_factory.mktemp("sd3") / "models", seed=3)


def _write(path: Path, shapes: dict[str, tuple[int, ...]], prefix: str = "") -> TensorSource:
    save_file({prefix + k: v for k, v in tiny_sd3.tensors(shapes, 0, torch.float16).items()}, str(path))
    return TensorSource(path)


@pytest.mark.parametrize(("kwargs", "variant"), [
    ({"qk_norm": False, "dual": ()}, "SD3 medium"),
    ({"qk_norm": True, "dual": ()}, "SD3.5 large"),
    ({"qk_norm": True, "dual": (0, 1)}, "SD3.5 medium (MMDiT-X)"),
])
def test_recognised_from_shapes_at_any_size(tmp_path: Path, kwargs: dict, variant: str) -> None:
    shapes = tiny_sd3.mmdit_shapes(width=192, blocks=3, context_dim=80, pooled_dim=40, pos_max=12, **kwargs)
    layout = sd3.parse_sd3(_write(tmp_path / "m.safetensors", shapes, "model.diffusion_model."))
    assert layout is not None and layout.variant == variant
    assert (layout.prefix, layout.width, layout.heads, layout.n_blocks) == ("model.diffusion_model.", 192, 3, 3)
    assert (layout.context_dim, layout.pooled_dim, layout.pos_embed_max, layout.patch) == (80, 40, 12, 2)
    assert layout.dual_attention == kwargs["dual"]
    model = sd3.build_sd3(TensorSource(tmp_path / "m.safetensors"), layout, CPU, torch.float32)
    assert len(model.transformer_blocks) == 3  # type: ignore[arg-type]


def test_other_files_are_not_sd3_and_odd_widths_are_refused(tmp_path: Path, files: dict[str, Path]) -> None:
    assert sd3.parse_sd3(TensorSource(files["vae"])) is None
    assert sd3.parse_sd3(TensorSource(files["clip_g"])) is None
    with pytest.raises(ModelError, match="64-wide heads"):
        sd3.parse_sd3(_write(tmp_path / "odd.safetensors", tiny_sd3.mmdit_shapes(width=96)))


def test_scaled_fp8_weights_stay_fp8_and_compute_scaled(files: dict[str, Path]) -> None:
    # the fp8 checkpoint and the fp16 split file hold the same model up to fp8 rounding; the checkpoint's
    # linears keep their fp8 weights in memory and apply the file's scale per call (models.fp8_weights)
    ckpt, split = TensorSource(files["checkpoints"]), TensorSource(files["diffusion_models"])
    key = "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"
    assert ckpt.has("model.diffusion_model.scaled_fp8") and ckpt.get(key).dtype == torch.float8_e4m3fn
    a: Any = sd3.load_sd3(ckpt, sd3.parse_sd3(ckpt), CPU)  # type: ignore[arg-type]
    b: Any = sd3.load_sd3(split, sd3.parse_sd3(split), CPU)  # type: ignore[arg-type]
    to_q = a.transformer_blocks[0].attn.to_q
    assert isinstance(to_q, Fp8Linear) and to_q.weight.dtype == torch.float8_e4m3fn
    scale = float(ckpt.get(key.replace(".weight", ".scale_weight")))
    assert torch.allclose(to_q.scale, torch.full_like(to_q.scale, scale))
    width = b.transformer_blocks[0].attn.to_q.weight.shape[0]
    fp8_q = ckpt.get(key)[:width].float() * scale  # diffusers' to_q is the first third of ComfyUI's fused qkv
    x = torch.randn(3, width)
    assert torch.allclose(to_q(x), F.linear(x, fp8_q, b.transformer_blocks[0].attn.to_q.bias), atol=1e-5)
    wb = b.transformer_blocks[0].attn.to_q.weight
    assert (fp8_q - wb).abs().max() <= wb.abs().max() / 8  # e4m3fn keeps 3 mantissa bits
    assert not torch.equal(fp8_q, wb)
    # the whole model runs on fp8 weights and stays close to the fp16 one
    gen = torch.Generator().manual_seed(0)
    xs, ctx, y = torch.randn(1, 16, 4, 4, generator=gen), torch.randn(1, 6, 4096, generator=gen), torch.randn(1, 96)
    out_a = sd3.sd3_fn(a)(xs, torch.tensor([500.0]), ctx, y)
    out_b = sd3.sd3_fn(b)(xs, torch.tensor([500.0]), ctx, y)
    assert (out_a - out_b).abs().max() < 0.25 * out_b.abs().max()


@pytest.fixture(scope="module")
def model(files: dict[str, Path]) -> torch.nn.Module:
    src = TensorSource(files["diffusion_models"])
    return sd3.load_sd3(src, sd3.parse_sd3(src), CPU)  # type: ignore[arg-type]


def test_call_pads_odd_latents_circularly_and_crops(model: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(0)
    x, ctx, y = torch.randn(1, 16, 5, 7, generator=gen), torch.randn(1, 10, 4096, generator=gen), torch.randn(1, 96)
    out = sd3.sd3_fn(model)(x, torch.tensor([600.0]), ctx, y)
    assert out.shape == x.shape
    padded = F.pad(x, (0, 1, 0, 1), mode="circular")
    ref = model(hidden_states=padded, encoder_hidden_states=ctx, pooled_projections=y, timestep=torch.tensor([600.0]),
                return_dict=False)[0]
    assert torch.allclose(out, ref[:, :, :5, :7], atol=1e-6)
    # the time matters, and the pooled vector does
    assert not torch.allclose(out, sd3.sd3_fn(model)(x, torch.tensor([100.0]), ctx, y))
    assert not torch.allclose(out, sd3.sd3_fn(model)(x, torch.tensor([600.0]), ctx, y + 1))


def test_latent_format_and_default_sampling(model: torch.nn.Module, files: dict[str, Path]) -> None:
    layout = sd3.parse_sd3(TensorSource(files["diffusion_models"]))
    assert layout is not None
    sm = sd3.sampling_model(model, sd3.recognition(layout), CPU)
    fmt = sm.latent_format
    assert (fmt.scale_factor, fmt.shift_factor, fmt.channels) == (1.5305, 0.0609, 16)
    assert float(fmt.process_in(torch.tensor(1.0))) == pytest.approx((1.0 - 0.0609) * 1.5305)
    # ComfyUI's SD3: shift 3, the model's time σ·1000
    assert float(sm.sampling.timestep(torch.tensor(0.75))) == pytest.approx(750.0)
    assert float(sm.sampling.sigmas[499]) == pytest.approx(shifted(3.0, 0.5))
    # sd3.5_simple_example's scheduler: sgm_uniform over the table's timesteps, then 0
    sigmas = calculate_sigmas(sm.sampling, "sgm_uniform", 4)
    t_min = shifted(3.0, 0.001) * 1000
    ts = torch.linspace(1000.0, t_min, 5)[:-1]
    assert sigmas.tolist() == pytest.approx([shifted(3.0, float(t) / 1000) for t in ts] + [0.0], rel=1e-5)
    # the conditioning's pooled output is y as it is (no SDXL size embeddings)
    entries = cond_entries([[torch.zeros(1, 77, 4096), {"pooled_output": torch.ones(1, 96)}]], sm, (8, 8), "positive")
    assert entries[0].y is not None and torch.equal(entries[0].y, torch.ones(1, 96))


def test_one_euler_step_with_the_model(model: torch.nn.Module, files: dict[str, Path]) -> None:
    layout = sd3.parse_sd3(TensorSource(files["diffusion_models"]))
    sm = sd3.sampling_model(model, sd3.recognition(layout), CPU)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(1)
    x, ctx, y = torch.randn(1, 16, 4, 4, generator=gen), torch.randn(1, 12, 4096, generator=gen), torch.randn(1, 96)
    denoiser = GuidedDenoiser(sm.unet, sm.sampling, "flow", [CondEntry(ctx, y)], [], 1.0, torch.float32)
    out = SAMPLERS["euler"](denoiser, x, torch.tensor([1.0, 0.8]), SamplerEnv(seed=0))
    v = sd3.sd3_fn(model)(x, torch.tensor([1000.0]), ctx, y)
    x0 = x - 1.0 * v
    assert torch.allclose(out, x + (x - x0) / 1.0 * (0.8 - 1.0), atol=1e-5)


@pytest.fixture(scope="module")
def encoders(files: dict[str, Path], tokenizer_ready: Path) -> dict[str, Any]:
    return sd3.load_text_encoder_files([files["clip_g"], files["clip_l"]], CPU)  # either order


def test_text_encoder_roles(files: dict[str, Path], encoders: dict[str, Any]) -> None:
    assert set(encoders) == {"l", "g"}
    assert encoders["l"].config.hidden_size == 32 and encoders["g"].config.hidden_size == 64
    assert hasattr(encoders["g"], "text_projection") and not hasattr(encoders["l"], "text_projection")
    ckpt = sd3.load_checkpoint_encoders(TensorSource(files["checkpoints"]), CPU)
    assert set(ckpt) == {"l", "g"}
    for role in ("l", "g"):
        for (k, a), b in zip(ckpt[role].state_dict().items(), encoders[role].state_dict().values(), strict=True):
            assert torch.equal(a, b), k


def test_conditioning_as_sd3_clip_builds_it(encoders: dict[str, Any]) -> None:
    [[cond, extras]] = sd3.encode("a red fox", encoders)
    pooled = extras["pooled_output"]
    wl = sd3_text.clip_windows("a red fox", sd3_text.CLIP_L)
    wg = sd3_text.clip_windows("a red fox", sd3_text.CLIP_G)
    l_out, l_pooled = sd3_text.encode_clip_windows(encoders["l"], sd3_text.CLIP_L, wl, None)
    g_out, g_pooled = sd3_text.encode_clip_windows(encoders["g"], sd3_text.CLIP_G, wg, None)
    assert cond.shape == (1, 77, 4096) and pooled.shape == (1, 96)
    assert torch.equal(cond[..., :32], l_out) and torch.equal(cond[..., 32:96], g_out)
    assert torch.all(cond[..., 96:] == 0)
    assert torch.equal(pooled, torch.cat([l_pooled, g_pooled], dim=-1))
    # CLIP-L's hidden state of the second-to-last block, no final norm (CLIP-L has 2 blocks here)
    runner_out = encoders["l"](input_ids=torch.tensor([[t for t, _ in wl[0]]]), output_hidden_states=True)
    assert torch.allclose(l_out, runner_out.hidden_states[1], atol=1e-5)
    eos = [t for t, _ in wl[0]].index(49407)
    assert torch.allclose(l_pooled, runner_out.last_hidden_state[:, eos], atol=1e-5)  # unprojected


def test_missing_parts_filled_as_comfyui_does(encoders: dict[str, Any]) -> None:
    # CLIPTextEncodeSD3, empty_padding none: no CLIP tokens and no T5 → zeros [1, 77, 4096], zero pooled 2048
    [[cond, extras]] = sd3.encode_sd3_node(encoders, "", "", "", "none")
    assert torch.equal(cond, torch.zeros(1, 77, 4096)) and torch.equal(extras["pooled_output"], torch.zeros(1, 2048))
    # empty_prompt padding encodes the empty prompt instead
    [[empty, _]] = sd3.encode_sd3_node(encoders, "", "", "", "empty_prompt")
    assert torch.equal(empty, sd3.encode("", encoders)[0][0])
    # an empty CLIP-L prompt with "none" while CLIP-G has one: L is topped up with the empty prompt's window
    [[mixed, _]] = sd3.encode_sd3_node(encoders, "", "a red fox", "", "none")
    assert torch.equal(mixed[..., :32], empty[..., :32])
    assert torch.equal(mixed[..., 32:96], sd3.encode("a red fox", encoders)[0][0][..., 32:96])
    # no CLIP-G file: its pooled part is 1280 zeros
    [[_, only_l]] = sd3.encode("a red fox", {"l": encoders["l"]})
    assert only_l["pooled_output"].shape == (1, 32 + 1280) and torch.all(only_l["pooled_output"][:, 32:] == 0)
    # a T5 encoder's output follows the CLIP part along tokens
    cond_t5, _ = sd3_text.sd3_conditioning({**encoders, "t5": object()}, "x", "x", "x",
                                           t5_encode=lambda _m, _t: torch.ones(1, 5, 4096))
    assert cond_t5.shape == (1, 82, 4096) and torch.all(cond_t5[:, 77:] == 1)


def test_long_prompts_take_more_windows(encoders: dict[str, Any]) -> None:
    [[cond, _]] = sd3.encode(" ".join(["fox"] * 100), encoders)
    assert cond.shape == (1, 154, 4096)


# --- T5-XXL: TripleCLIPLoader's third file and the checkpoint's text_encoders.t5xxl ---

T5_WIDTH = 128  # the tiny T5's width is the tiny MMDiT's text width here, as T5-XXL's 4096 is SD3's


@pytest.fixture(scope="module")
def t5_files(tmp_path_factory: pytest.TempPathFactory, tokenizer_ready: Path,
             t5_tokenizer_ready: Path) -> dict[str, Path]:
    return tiny_sd3.make_tiny_sd3(tmp_path_factory.mktemp("sd3-t5") / "models", seed=5, t5_width=T5_WIDTH)


@pytest.fixture(scope="module")
def triple(t5_files: dict[str, Path]) -> dict[str, Any]:
    return sd3.load_text_encoder_files([t5_files["t5"], t5_files["clip_l"], t5_files["clip_g"]], CPU)


def _t5_states(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).last_hidden_state.float()


def test_t5_tokens_as_comfyui_sd3_tokenizer_makes_them(t5_tokenizer_ready: Path) -> None:
    from comfymesh.diffusion.text.t5_tokenizer import t5_token_ids

    ids = t5_token_ids("a red fox")
    tokens = sd3_text.t5_weighted_tokens("a red fox")
    assert [t for t, _ in tokens] == [*ids, 1] + [0] * (77 - len(ids) - 1)  # end token, pads to 77
    assert all(w == 1.0 for _, w in tokens)
    long = sd3_text.t5_weighted_tokens("fox " * 100)
    assert len(long) > 77 and long[-1] == (1, 1.0)  # never truncated, no padding past 77
    assert sd3_text.t5_weighted_tokens(None) == [(1, 1.0)]  # no tokens: the end token alone
    weighted = sd3_text.t5_weighted_tokens("a (red fox:1.5)")
    red_fox = t5_token_ids("red fox")
    assert weighted[:len(t5_token_ids("a ")) + len(red_fox)] == \
        [(t, 1.0) for t in t5_token_ids("a ")] + [(t, 1.5) for t in red_fox]


def test_triple_loader_roles_and_the_checkpoints_t5(t5_files: dict[str, Path], triple: dict[str, Any]) -> None:
    assert set(triple) == {"l", "g", "t5"}
    assert triple["t5"].config.d_model == T5_WIDTH
    ckpt = sd3.load_checkpoint_encoders(TensorSource(t5_files["checkpoints"]), CPU)
    assert set(ckpt) == {"l", "g", "t5"}
    for (k, a), b in zip(ckpt["t5"].state_dict().items(), triple["t5"].state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_t5_features_follow_the_clip_part(triple: dict[str, Any]) -> None:
    [[cond, extras]] = sd3.encode("a red fox", triple)
    clip_only, pooled = sd3_text.sd3_conditioning({k: triple[k] for k in ("l", "g")}, "a red fox", "a red fox", None)
    ids = [t for t, _ in sd3_text.t5_weighted_tokens("a red fox")]
    assert cond.shape == (1, 77 + 77, T5_WIDTH)  # CLIP-L ‖ CLIP-G padded to T5's width, then T5's 77 tokens
    assert torch.equal(cond[:, :77, :96], clip_only[..., :96]) and torch.all(cond[:, :77, 96:] == 0)
    assert torch.allclose(cond[:, 77:], _t5_states(triple["t5"], ids), atol=1e-6)
    assert torch.equal(extras["pooled_output"], pooled)  # T5 adds nothing to the pooled vector
    # CLIPTextEncodeSD3 with an empty T5 prompt and padding "none": T5 encodes its end token alone
    [[node, _]] = sd3.encode_sd3_node(triple, "a red fox", "a red fox", "", "none")
    assert node.shape == (1, 78, T5_WIDTH)
    assert torch.allclose(node[:, 77:], _t5_states(triple["t5"], [1]), atol=1e-6)
    # with "empty_prompt" it is the empty prompt's 77 tokens (end, then pads)
    [[padded, _]] = sd3.encode_sd3_node(triple, "a red fox", "a red fox", "", "empty_prompt")
    assert torch.allclose(padded[:, 77:], _t5_states(triple["t5"], [1] + [0] * 76), atol=1e-6)


def test_t5_prompt_weights_move_tokens_from_the_empty_prompt(triple: dict[str, Any]) -> None:
    tokens = sd3_text.t5_weighted_tokens("a (red fox:1.5)")
    out = sd3_text.encode_t5_weighted(triple["t5"], "a (red fox:1.5)")
    z = _t5_states(triple["t5"], [t for t, _ in tokens])
    empty = _t5_states(triple["t5"], [1] + [0] * (len(tokens) - 1))
    w = torch.tensor([wt for _, wt in tokens])[None, :, None]
    assert torch.allclose(out, torch.where(w != 1.0, empty + 1.5 * (z - empty), z), atol=1e-6)
    assert not torch.allclose(out, z)


def test_the_mmdit_runs_on_t5_conditioning(t5_files: dict[str, Path], triple: dict[str, Any]) -> None:
    src = TensorSource(t5_files["diffusion_models"])
    layout = sd3.parse_sd3(src)
    assert layout is not None and layout.context_dim == T5_WIDTH
    [[cond, extras]] = sd3.encode("a red fox", triple)
    x = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(2))
    out = sd3.sd3_fn(sd3.load_sd3(src, layout, CPU))(x, torch.tensor([500.0]), cond, extras["pooled_output"])
    assert out.shape == x.shape and torch.isfinite(out).all()
