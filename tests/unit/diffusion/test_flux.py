"""FLUX.1 from ComfyUI's files: recognition by shape (dev, schnell, checkpoint prefix, reduced sizes), the built
diffusers model against a reference forward written here from ComfyUI's FLUX formulas on the file's own
weights (double/single blocks, RoPE, modulation, 2×2 patches), guidance on and off, Kontext reference tokens,
and scaled-fp8 files kept in fp8."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.families import flux
from comfymesh.diffusion.models.fp8_weights import Fp8Linear
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.models.tiny_flux import flux_shapes, random_tensors, scaled_fp8

CPU = torch.device("cpu")


def write(path: Path, state: dict[str, torch.Tensor]) -> TensorSource:
    save_file(state, str(path))
    return TensorSource(path)


@pytest.fixture(scope="module")
def dev_state() -> dict[str, torch.Tensor]:
    return random_tensors(flux_shapes(width=128, head_dim=64, depth=2, depth_single=2), 0, torch.float32)


# --- a reference FLUX forward from ComfyUI's formulas, on ComfyUI's key names ---------------------------------

def _lin(sd: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"))


def _embed(t: torch.Tensor, dim: int = 256) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = 1000.0 * t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _mlp_embed(sd: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    return _lin(sd, f"{name}.out_layer", F.silu(_lin(sd, f"{name}.in_layer", x)))


def _rms(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * scale


def _ln(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def _rope(ids: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    """[L, head/2, 2, 2] rotation matrices: per axis, angle pos·θ^(−2i/d)."""
    mats = []
    for a, d in enumerate(axes):
        omega = 1.0 / 10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
        ang = ids[:, a, None].double() * omega[None]
        mats.append(torch.stack([ang.cos(), -ang.sin(), ang.sin(), ang.cos()], -1).reshape(*ang.shape, 2, 2))
    return torch.cat(mats, dim=1).float()


def _apply_rope(x: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    pairs = x.reshape(*x.shape[:-1], -1, 1, 2)
    out = pe[None, None, :, :, :, 0] * pairs[..., 0] + pe[None, None, :, :, :, 1] * pairs[..., 1]
    return out.reshape(x.shape)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    q, k = _apply_rope(q, pe), _apply_rope(k, pe)
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


def _heads(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, n, _ = qkv.shape
    q, k, v = qkv.reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    return q, k, v


def reference_flux(sd: dict[str, torch.Tensor], heads: int, x: torch.Tensor, sigma: float, ctx: torch.Tensor,
                   pooled: torch.Tensor, guidance: float | None, refs: list[torch.Tensor] | None = None) -> torch.Tensor:
    n, c, h, w = x.shape
    width = sd["img_in.weight"].shape[0]
    head_dim = width // heads
    axes = (head_dim // 8, head_dim * 7 // 16, head_dim * 7 // 16)

    def patches(lat: torch.Tensor) -> torch.Tensor:
        b, ch, hh, ww = lat.shape
        return lat.reshape(b, ch, hh // 2, 2, ww // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, ch * 4)

    img = patches(x)
    ids = [flux.image_ids(h, w)]
    refs = refs or []
    for ref, rid in zip(refs, flux.reference_ids(refs, h, w, "offset"), strict=True):
        img = torch.cat([img, patches(ref)], dim=1)
        ids.append(rid)
    tokens = h // 2 * (w // 2)
    img = _lin(sd, "img_in", img)
    vec = _mlp_embed(sd, "time_in", _embed(torch.tensor([sigma])))
    if guidance is not None and "guidance_in.in_layer.weight" in sd:
        vec = vec + _mlp_embed(sd, "guidance_in", _embed(torch.tensor([guidance])))
    vec = vec + _mlp_embed(sd, "vector_in", pooled)
    txt = _lin(sd, "txt_in", ctx)
    pe = _rope(torch.cat([torch.zeros(ctx.shape[1], 3), *ids]), axes)
    depth = len({k.split(".")[1] for k in sd if k.startswith("double_blocks.")})
    for i in range(depth):
        b = f"double_blocks.{i}"
        mods = {s: _lin(sd, f"{b}.{s}_mod.lin", F.silu(vec))[:, None].chunk(6, dim=-1) for s in ("img", "txt")}
        qkvs = {}
        for s, stream in (("img", img), ("txt", txt)):
            shift, scale = mods[s][0], mods[s][1]
            q, k, v = _heads(_lin(sd, f"{b}.{s}_attn.qkv", (1 + scale) * _ln(stream) + shift), heads)
            qkvs[s] = (_rms(q, sd[f"{b}.{s}_attn.norm.query_norm.scale"]),
                       _rms(k, sd[f"{b}.{s}_attn.norm.key_norm.scale"]), v)
        q, k, v = (torch.cat([qkvs["txt"][j], qkvs["img"][j]], dim=2) for j in range(3))
        attn = _attention(q, k, v, pe)
        t_attn, i_attn = attn[:, : txt.shape[1]], attn[:, txt.shape[1]:]
        outs = {}
        for s, stream, a in (("img", img, i_attn), ("txt", txt, t_attn)):
            _, _, gate1, shift2, scale2, gate2 = mods[s]
            stream = stream + gate1 * _lin(sd, f"{b}.{s}_attn.proj", a)
            hidden = F.gelu(_lin(sd, f"{b}.{s}_mlp.0", (1 + scale2) * _ln(stream) + shift2), approximate="tanh")
            outs[s] = stream + gate2 * _lin(sd, f"{b}.{s}_mlp.2", hidden)
        img, txt = outs["img"], outs["txt"]
    joint = torch.cat([txt, img], dim=1)
    singles = len({k.split(".")[1] for k in sd if k.startswith("single_blocks.")})
    for i in range(singles):
        b = f"single_blocks.{i}"
        shift, scale, gate = _lin(sd, f"{b}.modulation.lin", F.silu(vec))[:, None].chunk(3, dim=-1)
        qkv, mlp = _lin(sd, f"{b}.linear1", (1 + scale) * _ln(joint) + shift).split([3 * width, 4 * width], -1)
        q, k, v = _heads(qkv, heads)
        q, k = _rms(q, sd[f"{b}.norm.query_norm.scale"]), _rms(k, sd[f"{b}.norm.key_norm.scale"])
        attn = _attention(q, k, v, pe)
        joint = joint + gate * _lin(sd, f"{b}.linear2", torch.cat([attn, F.gelu(mlp, approximate="tanh")], -1))
    img = joint[:, txt.shape[1]:]
    shift, scale = _lin(sd, "final_layer.adaLN_modulation.1", F.silu(vec))[:, None].chunk(2, dim=-1)
    out = _lin(sd, "final_layer.linear", (1 + scale) * _ln(img) + shift)[:, :tokens]
    c = sd["final_layer.linear.weight"].shape[0] // 4  # the latent's channels (a Fill/Canny x has more)
    return out.reshape(n, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)


# --- tests ----------------------------------------------------------------------------------------------------

def test_recognised_by_shape_at_any_size(tmp_path: Path, dev_state: dict[str, torch.Tensor]) -> None:
    layout = flux.parse_flux(write(tmp_path / "any_name.safetensors", dev_state))
    assert layout is not None
    assert (layout.width, layout.heads, layout.head_dim, layout.depth, layout.depth_single) == (128, 2, 64, 2, 2)
    assert (layout.in_channels, layout.vec_dim, layout.context_dim, layout.guidance) == (16, 32, 64, True)
    assert layout.axes_dims == (8, 28, 28)
    # schnell: no guidance_in; the all-in-one checkpoint: under model.diffusion_model.
    schnell = random_tensors(flux_shapes(guidance=False), 1, torch.float16)
    assert flux.parse_flux(write(tmp_path / "s.safetensors", schnell)).guidance is False  # type: ignore[union-attr]
    ckpt = {"model.diffusion_model." + k: v for k, v in dev_state.items()} | {"vae.decoder.conv_in.bias": torch.zeros(4)}
    assert flux.parse_flux(write(tmp_path / "c.safetensors", ckpt)).prefix == "model.diffusion_model."  # type: ignore[union-attr]
    # full FLUX.1 sizes give the published axes
    assert flux.FluxLayout("", 3072, 24, 128, 19, 38, 16, 16, 768, 4096, True, 12288).axes_dims == (16, 56, 56)


def test_other_files_are_not_flux(tmp_path: Path, dev_state: dict[str, torch.Tensor]) -> None:
    z = {k: v for k, v in dev_state.items() if not k.startswith("vector_in.")}
    assert flux.parse_flux(write(tmp_path / "z.safetensors", z)) is None
    odd = dict(dev_state, **{"img_in.weight": torch.zeros(128, 200)})  # 50 input channels: no FLUX.1 variant
    with pytest.raises(ModelError, match="which no FLUX"):
        flux.parse_flux(write(tmp_path / "odd.safetensors", odd))


@pytest.mark.parametrize(("in_channels", "variant"), [(96, "Fill"), (32, "Canny/Depth")])
def test_fill_and_canny_take_their_extra_channels(tmp_path: Path, in_channels: int, variant: str) -> None:
    """Recognised by img_in's width alone; the model reads x ‖ concat patched together and answers the latent's
    16 channels, as ComfyUI's Flux does with c_concat."""
    state = random_tensors(flux_shapes(width=128, head_dim=64, in_channels=in_channels), 5, torch.float32)
    src = write(tmp_path / "any.safetensors", state)
    layout = flux.parse_flux(src)
    assert layout is not None and (layout.in_channels, layout.out_channels) == (in_channels, 16)
    assert variant in layout.describe()
    model = flux.load_flux(src, layout, CPU)
    assert flux.layout_of(model) == dataclasses.replace(layout, prefix="")
    gen = torch.Generator().manual_seed(6)
    x, ctx, pooled = torch.randn(1, in_channels, 4, 6, generator=gen), torch.randn(1, 3, 64, generator=gen), torch.randn(1, 32, generator=gen)
    with torch.no_grad():
        ours = flux.FluxCall(model, layout)(x, torch.tensor([0.4]), ctx, flux.flux_y(pooled, 30.0, 32))
    expected = reference_flux(state, 2, x, 0.4, ctx, pooled, 30.0)
    assert ours.shape == (1, 16, 4, 6)
    assert torch.allclose(ours, expected, atol=2e-4), (ours - expected).abs().max()


@pytest.mark.parametrize("guidance", [3.5, None])
def test_model_matches_comfyui_formulas(tmp_path: Path, dev_state: dict[str, torch.Tensor],
                                        guidance: float | None) -> None:
    src = write(tmp_path / "dev.safetensors", dev_state)
    layout = flux.parse_flux(src)
    assert layout is not None
    call = flux.FluxCall(flux.load_flux(src, layout, CPU), layout)
    gen = torch.Generator().manual_seed(3)
    x, ctx, pooled = torch.randn(1, 16, 6, 8, generator=gen), torch.randn(1, 5, 64, generator=gen), torch.randn(1, 32, generator=gen)
    with torch.no_grad():
        ours = call(x, torch.tensor([0.62]), ctx, flux.flux_y(pooled, guidance, 32))
    expected = reference_flux(dev_state, 2, x, 0.62, ctx, pooled, guidance)
    assert ours.shape == x.shape
    assert torch.allclose(ours, expected, atol=2e-4), (ours - expected).abs().max()
    if guidance is not None:  # guidance is an input of the model, not ignored
        other = call(x, torch.tensor([0.62]), ctx, flux.flux_y(pooled, 1.0, 32))
        assert (other - ours).abs().max() > 1e-3


def test_kontext_reference_tokens_join_the_sequence(tmp_path: Path, dev_state: dict[str, torch.Tensor]) -> None:
    src = write(tmp_path / "kontext.safetensors", dev_state)
    layout = flux.parse_flux(src)
    assert layout is not None
    call = flux.FluxCall(flux.load_flux(src, layout, CPU), layout)
    gen = torch.Generator().manual_seed(4)
    x, ctx, pooled = torch.randn(1, 16, 4, 4, generator=gen), torch.randn(1, 3, 64, generator=gen), torch.randn(1, 32, generator=gen)
    refs = [torch.randn(1, 16, 4, 6, generator=gen), torch.randn(1, 16, 2, 2, generator=gen)]
    with torch.no_grad():
        ours = call(x, torch.tensor([0.5]), ctx, flux.flux_y(pooled, 2.5, 32), refs=refs)
    expected = reference_flux(dev_state, 2, x, 0.5, ctx, pooled, 2.5, refs)
    assert torch.allclose(ours, expected, atol=2e-4), (ours - expected).abs().max()


def test_reference_placement_follows_comfyui() -> None:
    refs = [torch.zeros(1, 16, 4, 6), torch.zeros(1, 16, 4, 2), torch.zeros(1, 16, 2, 2)]
    offset = flux.reference_ids(refs, 8, 8, "offset")
    # the first at index 1 from the origin; the second below it (4+4 > 2+6 is false → h offset 4 cells = 2 patches)
    assert offset[0][0].tolist() == [1.0, 0.0, 0.0]
    assert offset[1][0].tolist() == [1.0, 2.0, 0.0]
    # canvas now 8 high, 6 wide: the third goes beside (2+8 > 2+6) at w offset 6 cells = 3 patches
    assert offset[2][0].tolist() == [1.0, 0.0, 3.0]
    index = flux.reference_ids(refs, 8, 8, "index")
    assert [r[0, 0].item() for r in index] == [1.0, 2.0, 3.0]
    uxo = flux.reference_ids(refs[:2], 8, 8, "uxo")
    assert uxo[0][0].tolist() == [0.0, 4.0, 4.0]  # past the 8×8 image (4 patches)
    assert uxo[1][0].tolist() == [0.0, 6.0, 7.0]  # and past the first reference (4 and 6 cells more)
    with pytest.raises(ModelError):
        flux.reference_ids(refs, 8, 8, "sideways")


def test_scaled_fp8_stays_fp8_and_computes_the_dequantised_model(tmp_path: Path,
                                                                 dev_state: dict[str, torch.Tensor]) -> None:
    quant = scaled_fp8(dev_state)
    src = write(tmp_path / "flux1-dev-fp8-scaled.safetensors", quant)
    layout = flux.parse_flux(src)
    assert layout is not None
    model: Any = flux.load_flux(src, layout, CPU)
    fp8 = [m for m in model.modules() if isinstance(m, Fp8Linear)]
    assert fp8 and all(m.weight.dtype == torch.float8_e4m3fn for m in fp8)
    # the single block's fused linear1 split into q, k, v, MLP: each keeps fp8 and its scale
    assert isinstance(model.single_transformer_blocks[0].proj_mlp, Fp8Linear)
    dequantised = {k: v for k, v in quant.items() if not k.endswith("scale_weight") and k != "scaled_fp8"}
    for k in list(dequantised):
        if dequantised[k].dtype == torch.float8_e4m3fn:
            dequantised[k] = dequantised[k].float() * quant[k[: -len(".weight")] + ".scale_weight"]
    gen = torch.Generator().manual_seed(5)
    x, ctx, pooled = torch.randn(1, 16, 4, 4, generator=gen), torch.randn(1, 3, 64, generator=gen), torch.randn(1, 32, generator=gen)
    with torch.no_grad():
        ours = flux.FluxCall(model, layout)(x, torch.tensor([0.3]), ctx, flux.flux_y(pooled, 3.5, 32))
    expected = reference_flux(dequantised, 2, x, 0.3, ctx, pooled, 3.5)
    assert torch.allclose(ours, expected, atol=2e-4), (ours - expected).abs().max()
