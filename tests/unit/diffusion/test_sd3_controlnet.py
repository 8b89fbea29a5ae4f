"""SD3.5 ControlNets (Stability's format) on their own: recognised by keys, built as diffusers' SD3ControlNetModel
from shapes, and computed as ComfyUI's ControlNetEmbedder does (checked here against its formulas written out in
plain torch: the SD3 model's patch embedder plus the centred sin-cos grid, t and y embeddings, a self-attention
block with adaLN, the control projection, each residual repeated depth / blocks times); the hint prepared by
control type; the SD3 model taking residuals after every joint block, the last included; and the nodes
(ControlNetLoader, ControlNetApplyAdvanced with a VAE, KSampler) running it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from comfymesh.contracts.errors import ModelError, NodeInputError
from comfymesh.diffusion.families import sd3
from comfymesh.diffusion.models import sd3_controlnet, tiny_sd3, tiny_sd3_controlnet
from comfymesh.diffusion.models.cache import ModelCache
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.nodes import nodes
from comfymesh.stage.node import NodeContext

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sd3cn") / "models"
    tiny_sd3.make_tiny_sd3(root, seed=3, fp8_checkpoint=False)
    tiny_sd3_controlnet.make_template_files(root, seed=5)
    return root


@pytest.fixture(scope="module")
def transformer(models: Path) -> Any:
    src = TensorSource(models / "diffusion_models" / tiny_sd3.DIFFUSION_MODEL)
    layout = sd3.parse_sd3(src)
    assert layout is not None
    return sd3.build_sd3(src, layout, CPU, torch.float32)


def _file(models: Path, name: str) -> Path:
    return models / "controlnet" / name


def test_recognised_by_keys_and_built_from_shapes(models: Path) -> None:
    canny = _file(models, "sd3.5_large_controlnet_canny.safetensors")
    assert sd3_controlnet.is_sd35_controlnet(TensorSource(canny))
    assert not sd3_controlnet.is_sd35_controlnet(TensorSource(models / "vae" / tiny_sd3.VAE))
    net = sd3_controlnet.load_sd35_controlnet(canny, CPU, torch.float32)
    assert net.control_type == sd3_controlnet.CANNY and net.repeat == 2  # width 128 → depth 2, one block
    built: Any = net.net
    assert built.config.num_layers == 1 and built.inner_dim == 128
    with pytest.raises(ModelError, match=r"not an SD3\.5 ControlNet"):
        sd3_controlnet.load_sd35_controlnet(models / "vae" / tiny_sd3.VAE, CPU, torch.float32)


def test_hint_preparation_by_control_type(models: Path) -> None:
    image = torch.rand(1, 3, 8, 8)
    blur = sd3_controlnet.load_sd35_controlnet(_file(models, "sd3.5_large_controlnet_blur.safetensors"), CPU,
                                               torch.float32)
    assert torch.equal(blur.prepare(image), image)
    blur.control_type = sd3_controlnet.CANNY
    assert torch.allclose(blur.prepare(image), image * 127.5 + 0.5)
    blur.control_type = sd3_controlnet.DEPTH
    assert torch.allclose(blur.prepare(image), 1 - image)


def test_sincos_grid_is_comfyuis_formula() -> None:
    h, w, dim = 2, 3, 8
    grid = sd3_controlnet.sincos_grid(dim, h, w)
    ys = [0.0, 15.0]  # the shorter side spans 7.5 ± 7.5
    xs = [7.5 - 11.25, 7.5, 7.5 + 11.25]  # the longer one 3/2 of it
    omega = [1.0 / 10000 ** (k / 2) for k in range(2)]
    for r in range(h):
        for c in range(w):
            x, y = xs[c], ys[r]
            want = ([torch.sin(torch.tensor(x * o)) for o in omega] + [torch.cos(torch.tensor(x * o)) for o in omega]
                    + [torch.sin(torch.tensor(y * o)) for o in omega] + [torch.cos(torch.tensor(y * o)) for o in omega])
            assert torch.allclose(grid[r * w + c], torch.stack(want), atol=1e-5)


def _reference(src: TensorSource, model: Any, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
               hint: torch.Tensor) -> list[torch.Tensor]:
    """ComfyUI's ControlNetEmbedder.forward (double_y_emb off) in plain torch on the file's tensors."""
    g = {k: src.get(k).float() for k in src.keys}
    width, heads = 128, 2

    def lin(v: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(v, g[name + ".weight"], g[name + ".bias"])

    def patches(v: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.conv2d(v, weight, bias, stride=2).flatten(2).transpose(1, 2)

    tokens = patches(x, model.pos_embed.proj.weight.float(), model.pos_embed.proj.bias.float())
    tokens = tokens + sd3_controlnet.sincos_grid(width, x.shape[2] // 2, x.shape[3] // 2)
    half = 128
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(half) / half)
    args = t[:, None].float() * freqs[None]
    t_freq = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    c = lin(F.silu(lin(t_freq, "t_embedder.mlp.0")), "t_embedder.mlp.2")
    c = c + lin(F.silu(lin(y, "y_embedder.mlp.0")), "y_embedder.mlp.2")
    tokens = tokens + patches(hint, g["pos_embed_input.proj.weight"], g["pos_embed_input.proj.bias"])
    b = "transformer_blocks.0."
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = lin(F.silu(c), b + "adaLN_modulation.1").chunk(6, dim=1)
    normed = F.layer_norm(tokens, (width,), eps=1e-6) * (1 + scale_a[:, None]) + shift_a[:, None]
    q, k, v = lin(normed, b + "attn.qkv").chunk(3, dim=-1)
    qh, kh, vh = (u.reshape(u.shape[0], u.shape[1], heads, -1).transpose(1, 2) for u in (q, k, v))
    attn = F.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(tokens.shape)
    tokens = tokens + gate_a[:, None] * lin(attn, b + "attn.proj")
    normed = F.layer_norm(tokens, (width,), eps=1e-6) * (1 + scale_m[:, None]) + shift_m[:, None]
    mlp = lin(F.gelu(lin(normed, b + "mlp.fc1"), approximate="tanh"), b + "mlp.fc2")
    tokens = tokens + gate_m[:, None] * mlp
    out = lin(tokens, "controlnet_blocks.0")
    return [out, out]  # repeated ⌈depth 2 / 1 block⌉ times


def test_residuals_are_comfyuis_controlnet_embedder(models: Path, transformer: Any) -> None:
    path = _file(models, "sd3.5_large_controlnet_blur.safetensors")
    net = sd3_controlnet.load_sd35_controlnet(path, CPU, torch.float32)
    gen = torch.Generator().manual_seed(0)
    x, hint = torch.randn(2, 16, 6, 4, generator=gen), torch.randn(2, 16, 6, 4, generator=gen)
    t, y = torch.tensor([900.0, 250.0]), torch.randn(2, 96, generator=gen)
    got = sd3_controlnet.residuals(net, transformer, x, t, y, hint, strength=0.5)
    want = _reference(TensorSource(path), transformer, x, t, y, hint)
    assert len(got) == 2
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, 0.5 * w, atol=1e-4), (g - 0.5 * w).abs().max()


def test_model_takes_residuals_after_every_joint_block(transformer: Any) -> None:
    gen = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(1, 16, 4, 4, generator=gen), torch.randn(1, 7, 4096, generator=gen)
    t, y = torch.tensor([500.0]), torch.randn(1, 96, generator=gen)
    plain = sd3.sd3_fn(transformer)(x, t, ctx, y)
    zero = torch.zeros(1, 4, 128)
    assert torch.allclose(sd3.sd3_with_residuals(transformer, x, t, ctx, y, [zero, zero]), plain)
    last = torch.randn(1, 4, 128, generator=gen)
    changed = sd3.sd3_with_residuals(transformer, x, t, ctx, y, [zero, last])
    assert not torch.allclose(changed, plain, atol=1e-4)  # diffusers' own argument would skip the last block
    # the residual goes in after the block: the final layer of (block output + residual)
    seen: list[torch.Tensor] = []
    hook = transformer.norm_out.register_forward_hook(lambda _m, args, _o: seen.append(args[0]))
    try:
        sd3.sd3_fn(transformer)(x, t, ctx, y)
        sd3.sd3_with_residuals(transformer, x, t, ctx, y, [zero, last])
    finally:
        hook.remove()
    assert torch.allclose(seen[1], seen[0] + last, atol=1e-5)


@pytest.fixture
def sd3_ctx(models: Path, model_cache: ModelCache, tokenizer_ready: Path) -> NodeContext:
    """A home of its own (the shared tiny home's folders stay as other tests list them)."""
    return NodeContext(job_id="job", node_id="7", class_type="test", home=models.parent)


def _sample(ctx: NodeContext, strength: float, image: torch.Tensor, with_vae: bool = True) -> torch.Tensor:
    run = nodes.impls
    model, clip, vae = run["CheckpointLoaderSimple"](ctx, ckpt_name=tiny_sd3.CHECKPOINT)
    (cond,) = run["CLIPTextEncode"](ctx, text="a crystal dragon", clip=clip)
    (net,) = run["ControlNetLoader"](ctx, control_net_name="sd3.5_large_controlnet_canny.safetensors")
    pos, neg = run["ControlNetApplyAdvanced"](ctx, positive=cond, negative=cond, control_net=net, image=image,
                                              strength=strength, start_percent=0.0, end_percent=1.0,
                                              vae=vae if with_vae else None)
    (latent,) = run["EmptySD3LatentImage"](ctx, width=32, height=32, batch_size=1)
    (out,) = run["KSampler"](ctx, model=model, seed=1, steps=2, cfg=2.0, sampler_name="euler", scheduler="simple",
                             positive=pos, negative=neg, latent_image=latent, denoise=1.0)
    return torch.as_tensor(out["samples"])


def test_nodes_run_the_controlnet_on_the_sd3_model(sd3_ctx: NodeContext) -> None:
    gen = torch.Generator().manual_seed(2)
    image, other = torch.rand(1, 48, 40, 3, generator=gen), torch.rand(1, 48, 40, 3, generator=gen)
    plain = _sample(sd3_ctx, 0.0, image)
    controlled = _sample(sd3_ctx, 0.7, image)
    assert torch.isfinite(controlled).all()
    assert not torch.allclose(controlled, plain, atol=1e-4)
    assert torch.equal(_sample(sd3_ctx, 0.7, image), controlled)  # a rerun is identical
    assert not torch.allclose(_sample(sd3_ctx, 0.7, other), controlled, atol=1e-4)  # the hint counts
    with pytest.raises(NodeInputError, match="needs a VAE"):
        _sample(sd3_ctx, 0.7, image, with_vae=False)
