"""HiDream from ComfyUI's files: recognition by shape (bare, checkpoint prefix, reduced sizes, refusals), the built
diffusers model against a reference forward written here from ComfyUI's HiDream formulas on the file's own weights
(MoE routing, the Llama state each block reads, RoPE over (index, row, column), 2×2 patches, the negated output,
E1's image beside the canvas), and scaled-fp8 files kept in fp8."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.families import hidream
from comfymesh.diffusion.families import registry as families
from comfymesh.diffusion.models.fp8_weights import Fp8Linear
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.models.tiny_flux import random_tensors, scaled_fp8
from comfymesh.diffusion.models.tiny_hidream import hidream_shapes
from comfymesh.diffusion.sampling.ksampler import SamplingModel

CPU = torch.device("cpu")
DEPTH, SINGLE = 2, 2


def write(path: Path, state: dict[str, torch.Tensor]) -> TensorSource:
    save_file(state, str(path))
    return TensorSource(path)


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return random_tensors(hidream_shapes(width=256, depth=DEPTH, depth_single=SINGLE, experts=3), 0, torch.float32)


@pytest.fixture(scope="module")
def sampling(tmp_path_factory: pytest.TempPathFactory, state: dict[str, torch.Tensor]) -> SamplingModel:
    src = write(tmp_path_factory.mktemp("hidream") / "m.safetensors", state)
    layout = hidream.parse_hidream(src)
    assert layout is not None
    built = hidream.FAMILY.build(src, layout, CPU, None)
    return hidream.FAMILY.sampling_model(built.module, built.recognition, CPU)


# --- a reference HiDream forward from ComfyUI's formulas, on ComfyUI's key names ---------------------------------

def _lin(sd: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"))


def _ln(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def _rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w


def _swiglu(sd: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    return _lin(sd, f"{name}.w2", F.silu(_lin(sd, f"{name}.w1", x)) * _lin(sd, f"{name}.w3", x))


def _moe(sd: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    """Each token: the softmax gate's two best experts weighted by their (unnormalised) scores, plus the shared."""
    scores = (x @ sd[f"{name}.gate.weight"].T).softmax(-1)
    weight, idx = scores.topk(2, dim=-1)
    out = _swiglu(sd, f"{name}.shared_experts", x)
    for k in range(2):
        for e in range(sd[f"{name}.gate.weight"].shape[0]):
            picked = (idx[..., k] == e)[..., None]
            out = out + torch.where(picked, weight[..., k:k + 1] * _swiglu(sd, f"{name}.experts.{e}", x), 0.0)
    return out


def _timestep(t: torch.Tensor, dim: int = 256) -> torch.Tensor:
    half = dim // 2
    args = t[:, None].float() * torch.exp(-math.log(10000) * torch.arange(half) / half)[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _rope(ids: torch.Tensor, axes: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, head/2] of each axis' angles pos·θ^(−2k/d), axes concatenated."""
    angles = [ids[:, i:i + 1].double() / (10000.0 ** (torch.arange(0, d, 2).double() / d)) for i, d in enumerate(axes)]
    a = torch.cat(angles, dim=-1)
    return a.cos().float(), a.sin().float()


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [N, T, H, D]: each pair (x0, x1) rotated by its angle."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    c, s = cos[None, :, None], sin[None, :, None]
    return torch.stack([c * x0 - s * x1, s * x0 + c * x1], dim=-1).flatten(-2)


def _attention(sd: dict[str, torch.Tensor], name: str, img: torch.Tensor, txt: torch.Tensor | None, heads: int,
               cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    def qkv(x: torch.Tensor, s: str) -> list[torch.Tensor]:
        q = _rms(_lin(sd, f"{name}.to_q{s}", x), sd[f"{name}.q_rms_norm{s}.weight"])
        k = _rms(_lin(sd, f"{name}.to_k{s}", x), sd[f"{name}.k_rms_norm{s}.weight"])
        return [p.reshape(*p.shape[:2], heads, -1) for p in (q, k, _lin(sd, f"{name}.to_v{s}", x))]

    q, k, v = qkv(img, "")
    if txt is not None:
        q, k, v = (torch.cat([a, b], dim=1) for a, b in zip((q, k, v), qkv(txt, "_t"), strict=True))
    q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
    attn = torch.softmax(torch.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(q.shape[-1]), dim=-1)
    out = torch.einsum("nhqk,nkhd->nqhd", attn, v).flatten(2)
    if txt is None:
        return _lin(sd, f"{name}.to_out", out), None
    n_img = img.shape[1]
    return _lin(sd, f"{name}.to_out", out[:, :n_img]), _lin(sd, f"{name}.to_out_t", out[:, n_img:])


def reference(sd: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor,
              ll: torch.Tensor, image_cond: torch.Tensor | None = None) -> torch.Tensor:
    width = sd["x_embedder.proj.weight"].shape[0]
    heads = width // 128
    n, _, h, w = x.shape
    if image_cond is not None:
        x = torch.cat([x, image_cond], dim=-1)
    x = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2), mode="circular")
    c, hp, wp = x.shape[1], x.shape[-2] // 2, x.shape[-1] // 2
    tokens = x.reshape(n, c, hp, 2, wp, 2).permute(0, 2, 4, 3, 5, 1).reshape(n, hp * wp, 4 * c)
    temb = _lin(sd, "t_embedder.timestep_embedder.linear_2", F.silu(_lin(sd, "t_embedder.timestep_embedder.linear_1",
                                                                          _timestep(t))))
    pemb = _lin(sd, "p_embedder.pooled_embedder.linear_2", F.silu(_lin(sd, "p_embedder.pooled_embedder.linear_1", y)))
    adaln = F.silu(temb + pemb)
    img = _lin(sd, "x_embedder.proj", tokens)
    blocks = DEPTH + SINGLE
    lls = [_lin(sd, f"caption_projection.{i}.linear", ll[:, min(i, 31, ll.shape[1] - 1)]) for i in range(blocks)]
    t5 = _lin(sd, f"caption_projection.{blocks}.linear", ctx)
    initial = torch.cat([t5, lls[-1]], dim=1)  # ComfyUI: T5 then the last block's Llama state
    ids = torch.zeros(hp * wp + t5.shape[1] + 2 * lls[0].shape[1], 3)
    ids[: hp * wp, 1] = torch.arange(hp).repeat_interleave(wp).float()
    ids[: hp * wp, 2] = torch.arange(wp).repeat(hp).float()
    cos, sin = _rope(ids, (64, 32, 32))
    for i in range(DEPTH):
        b = f"double_stream_blocks.{i}.block"
        m = _lin(sd, f"{b}.adaLN_modulation.1", adaln)[:, None].chunk(12, dim=-1)
        txt = torch.cat([initial, lls[i]], dim=1)
        ai, at = _attention(sd, f"{b}.attn1", _ln(img) * (1 + m[1]) + m[0], _ln(txt) * (1 + m[7]) + m[6], heads,
                            cos, sin)
        img = img + m[2] * ai
        assert at is not None
        txt = txt + m[8] * at
        img = img + m[5] * _moe(sd, f"{b}.ff_i", _ln(img) * (1 + m[4]) + m[3])
        txt = txt + m[11] * _swiglu(sd, f"{b}.ff_t", _ln(txt) * (1 + m[10]) + m[9])
        initial = txt[:, :initial.shape[1]]
    n_img = img.shape[1]
    hidden = torch.cat([img, initial], dim=1)
    keep = hidden.shape[1]
    for i in range(SINGLE):
        b = f"single_stream_blocks.{i}.block"
        m = _lin(sd, f"{b}.adaLN_modulation.1", adaln)[:, None].chunk(6, dim=-1)
        hidden = torch.cat([hidden, lls[DEPTH + i]], dim=1)
        a, _ = _attention(sd, f"{b}.attn1", _ln(hidden) * (1 + m[1]) + m[0], None, heads, cos, sin)
        hidden = hidden + m[2] * a
        hidden = hidden + m[5] * _moe(sd, f"{b}.ff_i", _ln(hidden) * (1 + m[4]) + m[3])
        hidden = hidden[:, :keep]
    shift, scale = _lin(sd, "final_layer.adaLN_modulation.1", adaln).chunk(2, dim=1)
    out = _lin(sd, "final_layer.linear", _ln(hidden[:, :n_img]) * (1 + scale[:, None]) + shift[:, None])
    out = out.reshape(n, hp, wp, 2, 2, -1).permute(0, 5, 1, 3, 2, 4).reshape(n, -1, 2 * hp, 2 * wp)
    return -out[:, :, :h, :w]


def _inputs(seed: int, n: int = 1, h: int = 5, w: int = 7, states: int = 3) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 16, h, w, generator=g), torch.tensor([730.0] * n), torch.randn(n, 6, 64, generator=g),
            torch.randn(n, 96, generator=g), torch.randn(1, states, 4, 32, generator=g))


# --- tests ---------------------------------------------------------------------------------------------------------

def test_recognised_by_shape_bare_and_under_the_checkpoint_prefix(tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    bare = write(tmp_path / "bare.safetensors", state)
    fam, layout = families.recognise(bare)  # type: ignore[misc]
    assert fam.name == "hidream"
    assert (layout.width, layout.heads, layout.depth, layout.depth_single, layout.experts) == (256, 2, DEPTH, SINGLE, 3)
    assert (layout.in_channels, layout.pooled_dim, layout.t5_dim, layout.llama_dim) == (16, 96, 64, 32)
    prefixed = write(tmp_path / "ckpt.safetensors", {f"model.diffusion_model.{k}": v for k, v in state.items()})
    assert hidream.parse_hidream(prefixed) == layout.__class__(**{**layout.__dict__, "prefix": "model.diffusion_model."})


def test_released_shapes_read_as_comfyui_configures_the_model() -> None:
    # the full-size layout from the shape function alone (no tensors): ComfyUI's model_detection values
    shapes = hidream_shapes(width=2560, depth=16, depth_single=32, experts=4, pooled=2048, t5=4096, llama=4096)
    assert shapes["double_stream_blocks.0.block.ff_i.experts.0.w1.weight"] == (hidream.swiglu_hidden(4 * 2560), 2560)
    assert hidream.swiglu_hidden(4 * 2560) == 6912 and hidream.swiglu_hidden(2 * 2560) == 3584
    assert len([k for k in shapes if k.startswith("caption_projection.")]) == 49
    layout = hidream.HiDreamLayout("", 2560, 16, 32, 16, 16, 2048, 4096, 4096, 4)
    config = hidream.model_config(layout)
    assert config["num_attention_heads"] == 20 and config["attention_head_dim"] == 128
    assert config["axes_dims_rope"] == (64, 32, 32) and config["num_activated_experts"] == 2
    # each block's Llama state: 0…31 then 31 (ComfyUI's llama_layers)
    ll = torch.arange(32.0).reshape(1, 32, 1, 1)
    assert hidream.llama_per_block(ll, 48).flatten().tolist() == [*range(32), *[31] * 16]


def test_refusals(tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    other = write(tmp_path / "other.safetensors", {"img_in.weight": torch.zeros(4, 4)})
    assert hidream.parse_hidream(other) is None
    odd = random_tensors(hidream_shapes(width=256, experts=2), 0, torch.float32)
    odd["double_stream_blocks.0.block.ff_i.experts.0.w1.weight"] = torch.zeros(100, 256)
    with pytest.raises(ModelError, match="feed-forward width"):
        hidream.parse_hidream(write(tmp_path / "odd.safetensors", odd))


@pytest.mark.parametrize("with_image", [False, True])
def test_model_matches_comfyui_formulas(sampling: SamplingModel, state: dict[str, torch.Tensor],
                                        with_image: bool) -> None:
    sm = sampling
    x, t, ctx, y, ll = _inputs(1, n=2)
    image = torch.randn(1, 16, 5, 7) if with_image else None
    got = sm.unet(x, t, ctx, y, llama=ll, image_cond=image)  # type: ignore[call-arg]
    want = reference(state, x, t, ctx, y, ll.expand(2, -1, -1, -1), None if image is None else image.expand(2, -1, -1, -1))
    assert got.shape == x.shape
    torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4)


def test_sampling_defaults_and_entry_inputs(sampling: SamplingModel) -> None:
    sm = sampling
    # ComfyUI's HiDream sampling_settings are empty: flow with shift 1, time σ·1000
    assert sm.prediction == "flow" and sm.latent_format.scale_factor == pytest.approx(0.3611)
    assert float(sm.sampling.timestep(torch.tensor(0.5))) == pytest.approx(500.0)
    patched = hidream.FAMILY.model_sampling({"kind": "flow", "shift": 3.0, "multiplier": 1000.0}, sm)
    assert float(patched.sampling.sigma(torch.tensor(500.0))) == pytest.approx(3 * 0.5 / (1 + 2 * 0.5))
    latent = torch.randn(1, 16, 4, 4)
    inputs = sm.entry_inputs({"conditioning_llama3": torch.ones(1, 3, 2, 32), "concat_latent_image": latent})  # type: ignore[misc]
    assert inputs is not None and inputs["llama"].shape == (1, 3, 2, 32)
    torch.testing.assert_close(inputs["image_cond"], (latent - 0.1159) * 0.3611)
    with pytest.raises(Exception, match="Llama hidden states"):
        sm.unet(*_inputs(2)[:4])


def test_scaled_fp8_file_stays_fp8(tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    quantised = scaled_fp8(state)
    src = write(tmp_path / "fp8.safetensors", quantised)
    layout = hidream.parse_hidream(src)
    assert layout is not None
    built = hidream.FAMILY.build(src, layout, CPU, None)
    fp8 = [m for m in built.module.modules() if isinstance(m, Fp8Linear)]
    assert fp8 and all(m.weight.dtype == torch.float8_e4m3fn for m in fp8)
    dequantised = dict(state)
    for k, v in quantised.items():
        if v.dtype == torch.float8_e4m3fn and k != "scaled_fp8":
            dequantised[k] = v.float() * quantised[k[: -len(".weight")] + ".scale_weight"].float()
    sm = hidream.FAMILY.sampling_model(built.module, built.recognition, CPU)
    x, t, ctx, y, ll = _inputs(3)
    torch.testing.assert_close(sm.unet(x, t, ctx, y, llama=ll),  # type: ignore[call-arg]
                               reference(dequantised, x, t, ctx, y, ll),
                               atol=2e-4, rtol=2e-4)


def test_recognition_is_disjoint_from_the_other_families(tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    from comfymesh.diffusion.models.tiny_flux import flux_shapes
    from comfymesh.diffusion.models.tiny_qwen_image import qwen_image_shapes
    from comfymesh.diffusion.models.tiny_sd3 import mmdit_shapes
    from comfymesh.diffusion.models.tiny_zimage import zimage_shapes

    src = write(tmp_path / "hidream.safetensors", state)
    assert [f.name for f in families.families() if f.name != "hidream" and f.recognise(src) is not None] == []
    for name, shapes in {"flux": flux_shapes(), "qwen_image": qwen_image_shapes(), "sd3": mmdit_shapes(),
                         "zimage": zimage_shapes()}.items():
        other = write(tmp_path / f"{name}.safetensors", {k: torch.zeros(v) for k, v in shapes.items()})
        assert hidream.parse_hidream(other) is None, name


def test_lora_keys_fit_and_patch_as_comfyui_names_them(tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    from comfymesh.diffusion.models import flow_lora, tiny_lora
    from comfymesh.diffusion.models.lora import read_lora

    src = write(tmp_path / "m.safetensors", state)
    layout = hidream.parse_hidream(src)
    assert layout is not None
    built = hidream.FAMILY.build(src, layout, CPU, None)
    assert built.lora_map is not None
    linears = tiny_lora.linear_keys(src)
    kohya = tiny_lora.kohya_lora(linears, seed=1)
    # ComfyUI's HiDream map: SimpleTuner's lycoris_ and transformer. names besides kohya's lora_unet_
    name = "double_stream_blocks_0_block_attn1_to_q"
    up, down = kohya[f"lora_unet_{name}.lora_up.weight"], kohya[f"lora_unet_{name}.lora_down.weight"]
    lycoris = {f"lycoris_{name}.lora_up.weight": up, f"lycoris_{name}.lora_down.weight": down,
               f"lycoris_{name}.alpha": kohya[f"lora_unet_{name}.alpha"]}
    for tensors in (kohya, lycoris):
        adapters = read_lora(tiny_lora.write(tmp_path / f"l{len(tensors)}.safetensors", tensors))
        assert flow_lora.fitting(built.module, built.lora_map, adapters) == set(adapters)
        overrides, _ = flow_lora.patched_weights(built.module, built.lora_map, [(adapters, 0.5)])
        key = "double_stream_blocks.0.block.attn1.to_q.weight"
        base = dict(built.module.named_parameters())[key]
        alpha = float(kohya[f"lora_unet_{name}.alpha"])
        torch.testing.assert_close(overrides[key], base + 0.5 * (up @ down) * alpha / down.shape[0])
