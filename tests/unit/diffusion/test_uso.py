"""FLUX.1 USO: USOStyleReference as ComfyUI 0.8.0 declares it (golden diffsynth_object_info.json), the USO projector
recognised by keys and shapes (ModelPatchLoader's `feature_embedder.mid_layer_norm.bias`), its tokens against
ComfyUI's formulas written out here (per level: the token axis through Linear + SiLU, LayerNorm, projection;
high ‖ mid ‖ low from layers −2, −11, −20), the SigLIP output's per-layer hidden states, and the tokens in
FLUX's call: before the text after the text projection, the call differs and runs eagerly, none is bit for bit
the plain call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.families import flux
from comfymesh.diffusion.models import clip_vision
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.models.tiny_flux import flux_shapes, random_tensors
from comfymesh.diffusion.models.tiny_uso import TINY_STYLE_TOKENS, make_tiny_uso_projector, uso_shapes
from comfymesh.diffusion.models.uso_projector import (
    LEVELS,
    PREFIX,
    load_uso_projector,
    parse_uso,
    stack_hidden_states,
    style_tokens,
)
from comfymesh.diffusion.nodes import nodes

GOLDEN = Path(__file__).parents[2] / "golden" / "diffsynth_object_info.json"
CPU = torch.device("cpu")


def test_object_info_equals_comfyui_080() -> None:
    entry = json.loads(GOLDEN.read_text())["USOStyleReference"]
    assert nodes.schemas["USOStyleReference"].object_info() == entry


def test_projector_recognised_by_keys_and_shapes(tmp_path: Path) -> None:
    path = make_tiny_uso_projector(tmp_path / "any_name.safetensors", siglip_tokens=9, style_tokens=2,
                                   siglip_width=4, hidden=6)
    layout = parse_uso(TensorSource(path))
    assert layout is not None
    assert (layout.siglip_tokens, layout.style_tokens, layout.siglip_width, layout.hidden) == (9, 2, 4, 6)
    full = uso_shapes()  # the real file: 729 SigLIP tokens → 64 a level, width 1152 → FLUX's 3072
    assert full[f"{PREFIX}mid_embedding_linear.0.weight"] == (64, 729)
    assert full[f"{PREFIX}high_projection.weight"] == (3072, 1152)
    other = tmp_path / "other.safetensors"
    save_file({"img_in.weight": torch.zeros(2, 2)}, str(other))
    assert parse_uso(TensorSource(other)) is None
    with pytest.raises(ModelError, match="no USO style projector"):
        load_uso_projector(other, CPU)


def _by_hand(state: dict[str, torch.Tensor], hidden: torch.Tensor) -> torch.Tensor:
    """ComfyUI's SigLIPMultiFeatProjModel written out: hidden [B, T, D] of layers −20, −11, −2."""
    levels = {"low": hidden[0], "mid": hidden[1], "high": hidden[2]}
    out = []
    for name in ("high", "mid", "low"):
        p = f"{PREFIX}{name}_"
        h = levels[name].transpose(1, 2)  # [B, D, T]
        e = h @ state[p + "embedding_linear.0.weight"].T + state[p + "embedding_linear.0.bias"]
        e = (e * torch.sigmoid(e)).transpose(1, 2)  # SiLU; [B, S, D]
        mean = e.mean(-1, keepdim=True)
        var = ((e - mean) ** 2).mean(-1, keepdim=True)
        e = (e - mean) / torch.sqrt(var + 1e-5) * state[p + "layer_norm.weight"] + state[p + "layer_norm.bias"]
        out.append(e @ state[p + "projection.weight"].T + state[p + "projection.bias"])
    return torch.cat(out, dim=1)


def test_projector_tokens_match_comfyui_formulas(tmp_path: Path) -> None:
    path = make_tiny_uso_projector(tmp_path / "p.safetensors", seed=2, dtype=torch.float32, siglip_tokens=9,
                                   style_tokens=2, siglip_width=4, hidden=6)
    net = load_uso_projector(path, CPU)
    src = TensorSource(path)
    state = {k: src.get(k) for k in src.keys}
    all_states = torch.randn(1, 22, 9, 4, generator=torch.Generator().manual_seed(5))
    stacked = stack_hidden_states(all_states[:, [-20, -11]], all_states[:, -2])
    assert torch.equal(stacked[0], all_states[:, -20]) and torch.equal(stacked[1], all_states[:, -11])
    assert torch.equal(stacked[2], all_states[:, -2])
    tokens = style_tokens(net, stacked, torch.float32)
    assert tokens.shape == (1, 3 * 2, 6)
    assert torch.allclose(tokens, _by_hand(state, stacked), atol=1e-5)


def test_bf16_projector_computes_in_its_dtype_and_answers_the_text_dtype(tmp_path: Path) -> None:
    path = make_tiny_uso_projector(tmp_path / "p.safetensors", seed=2, siglip_tokens=9, style_tokens=2,
                                   siglip_width=4, hidden=6)
    net = load_uso_projector(path, CPU)
    assert next(net.parameters()).dtype == torch.bfloat16
    stacked = torch.randn(3, 1, 9, 4, generator=torch.Generator().manual_seed(1))
    tokens = style_tokens(net, stacked, torch.float32)
    assert tokens.dtype == torch.float32
    # ComfyUI: the input in the text dtype, then the weights' dtype, the whole projector in bf16
    assert torch.equal(tokens, net(stacked.to(torch.bfloat16)).float())


def test_siglip_output_keeps_the_layers_uso_reads(tmp_path: Path) -> None:
    """Layers -20 and -11 of ComfyUI's all_hidden_states (layer outputs, not the embeddings), not every layer."""
    path = clip_vision.make_tiny_siglip_vision(tmp_path / "v.safetensors", layers=20, seed=3)
    model = clip_vision.load_clip_vision(path)
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(2))
    out = clip_vision.encode_image(model, image)
    assert out["style_hidden_states"].shape == (1, 2, 729, 32) and "all_hidden_states" not in out
    with torch.no_grad():
        pixels = clip_vision.preprocess(image, model.image_size, "center", model.mean, model.std)
        layers = model.model(pixel_values=pixels, output_hidden_states=True).hidden_states[1:]
    assert torch.equal(out["style_hidden_states"][:, 0], layers[-20])
    assert torch.equal(out["style_hidden_states"][:, 1], layers[-11])
    assert torch.equal(layers[-2], out["penultimate_hidden_states"])
    stacked = stack_hidden_states(out["style_hidden_states"], out["penultimate_hidden_states"])
    assert stacked.shape == (3, 1, 729, 32)
    shallow = clip_vision.load_clip_vision(clip_vision.make_tiny_siglip_vision(tmp_path / "s.safetensors",
                                                                               layers=19, seed=3))
    assert "style_hidden_states" not in clip_vision.encode_image(shallow, image)


@pytest.fixture(scope="module")
def call(tmp_path_factory: pytest.TempPathFactory) -> flux.FluxCall:
    path = tmp_path_factory.mktemp("flux") / "flux.safetensors"
    save_file(random_tensors(flux_shapes(width=128, head_dim=64), 0, torch.float32), str(path))
    src = TensorSource(path)
    layout = flux.parse_flux(src)
    assert layout is not None
    return flux.FluxCall(flux.load_flux(src, layout, CPU), layout)


def test_style_tokens_join_the_text_after_its_projection(call: flux.FluxCall, tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 16, 8, 8, generator=gen), torch.tensor([0.6])
    ctx = torch.randn(1, 5, 64, generator=gen)
    y = flux.flux_y(torch.randn(1, 32, generator=gen), 3.5, 32)
    projector = load_uso_projector(make_tiny_uso_projector(tmp_path / "p.safetensors", hidden=128), CPU)
    style = style_tokens(projector, torch.randn(3, 1, 729, 32, generator=gen), torch.float32)
    assert style.shape == (1, 3 * TINY_STYLE_TOKENS, 128)  # 3 × 64 = 192 at full size

    seen: list[int] = []
    block = call.model.get_submodule("transformer_blocks.0")
    hook = block.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw["encoder_hidden_states"].shape[1]), with_kwargs=True)
    try:
        plain = call(x, t, ctx, y)
        styled = call(x, t, ctx, y, style=style)
        again = call(x, t, ctx, y, style=None)
    finally:
        hook.remove()
    assert seen == [5, 5 + 3 * TINY_STYLE_TOKENS, 5]  # the text grows by the style tokens, then no more
    assert not call.model.get_submodule("context_embedder")._forward_hooks  # the hook left with the call
    assert styled.shape == plain.shape and not torch.allclose(styled, plain, atol=1e-4)
    assert torch.equal(again, plain)
    assert call.static_inputs(x, t, ctx, y, style=style) is None  # eager, like reference latents
    assert call.static_inputs(x, t, ctx, y) is not None
    # the first block sees the style tokens, then the projected text
    captured: list[torch.Tensor] = []
    handle = block.register_forward_pre_hook(
        lambda _m, _a, kw: captured.append(kw["encoder_hidden_states"]), with_kwargs=True)
    try:
        call(x, t, ctx, y, style=style)
    finally:
        handle.remove()
    text = call.model.get_submodule("context_embedder")(ctx)
    assert torch.equal(captured[0][:, :3 * TINY_STYLE_TOKENS], style)
    assert torch.equal(captured[0][:, 3 * TINY_STYLE_TOKENS:], text)


def test_every_level_is_read(tmp_path: Path) -> None:
    """Each level's weights matter: zeroing one level's projection changes its tokens alone."""
    path = make_tiny_uso_projector(tmp_path / "p.safetensors", dtype=torch.float32, siglip_tokens=9,
                                   style_tokens=2, siglip_width=4, hidden=6)
    net = load_uso_projector(path, CPU)
    stacked = torch.randn(3, 1, 9, 4, generator=torch.Generator().manual_seed(1))
    before = style_tokens(net, stacked, torch.float32)
    for i, level in enumerate(LEVELS):
        proj = getattr(net, f"{level}_projection")
        with torch.no_grad():
            proj.weight.zero_()
            proj.bias.zero_()
        after = style_tokens(net, stacked, torch.float32)
        assert torch.equal(after[:, 2 * i:2 * i + 2], torch.zeros(1, 2, 6))
        assert torch.equal(after[:, 2 * (i + 1):], before[:, 2 * (i + 1):])


def test_full_size_projector_gives_192_tokens_of_fluxs_width() -> None:
    from comfymesh.diffusion.models.uso_projector import UsoLayout, UsoProjector

    net = UsoProjector(UsoLayout(729, 64, 1152, 3072)).eval()
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == {
        k.removeprefix(PREFIX): v for k, v in uso_shapes().items()}
    tokens = style_tokens(net, torch.randn(3, 1, 729, 1152), torch.float32)
    assert tokens.shape == (1, 192, 3072)


def test_chained_references_put_the_latest_first(call: flux.FluxCall, tmp_path: Path) -> None:
    from comfymesh.diffusion.nodes.uso_style import StyledCall

    gen = torch.Generator().manual_seed(3)
    net = load_uso_projector(make_tiny_uso_projector(tmp_path / "p.safetensors", hidden=128), CPU)
    first, second = (torch.randn(3, 1, 729, 32, generator=gen) for _ in range(2))
    styled = StyledCall(call, [(net, first), (net, second)])
    tokens = styled.style(torch.float32)
    assert torch.equal(tokens, torch.cat([style_tokens(net, second, torch.float32),
                                          style_tokens(net, first, torch.float32)], dim=1))
    captured: list[torch.Tensor] = []
    block = call.model.get_submodule("transformer_blocks.0")
    handle = block.register_forward_pre_hook(
        lambda _m, _a, kw: captured.append(kw["encoder_hidden_states"]), with_kwargs=True)
    x, ctx = torch.randn(2, 16, 8, 8, generator=gen), torch.randn(2, 5, 64, generator=gen)
    try:
        styled(x, torch.tensor([0.5, 0.5]), ctx, flux.flux_y(None, 3.5, 32).expand(2, -1))
    finally:
        handle.remove()
    assert captured[0].shape == (2, 2 * 3 * TINY_STYLE_TOKENS + 5, 128)  # batch-1 tokens serve a batch of 2
    assert torch.equal(captured[0][1, :2 * 3 * TINY_STYLE_TOKENS], tokens[0])
