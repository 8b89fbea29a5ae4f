"""Z-Image Fun ControlNets on their own: recognised and built from shapes (diffusers' Z-Image control blocks), and
run inside the Z-Image transformer's call as ComfyUI's ZImageControlPatch runs them: strength 0 is the plain model,
the control blocks land after main blocks 0, d, 2d, … (d = round(30 / control layers)) with ComfyUI's running
block counter, the 2.1 form's refiner control blocks after the noise-refiner blocks; and ModelPatchLoader with
QwenImageDiffsynthControlnet putting the control (the FLUX VAE's latent) into the sampled Z-Image call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from comfymesh.contracts.errors import ModelError, NodeInputError
from comfymesh.diffusion.families import zimage
from comfymesh.diffusion.models import tiny_zimage, tiny_zimage_fun, zimage_fun_control
from comfymesh.diffusion.models.cache import ModelCache, get_model_cache
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.models.zimage_fun_control import FunPatch, fun_controls, load_zimage_fun
from comfymesh.diffusion.nodes import diffsynth, loaders
from comfymesh.diffusion.nodes.handles import checkpoint_of, loras_of
from comfymesh.diffusion.nodes.model_patches import apply_model_sampling
from comfymesh.stage.node import NodeContext

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("zfun") / "models"
    tiny_zimage.make_tiny_zimage(root, seed=3, dtype=torch.float32)
    tiny_zimage_fun.make_template_files(root, seed=4)
    tiny_zimage_fun.make_tiny_zimage_fun(root / "model_patches" / "fun21.safetensors", seed=5, control_layers=15,
                                         refiner_control=True, in_dim=33)
    return root


@pytest.fixture(scope="module")
def model(models: Path) -> Any:
    src = TensorSource(models / "diffusion_models" / tiny_zimage.DIFFUSION_MODEL)
    layout = zimage.parse_zimage(src)
    assert layout is not None
    return zimage.build_zimage(src, layout, CPU, torch.float32)


def test_recognised_and_built_from_shapes(models: Path) -> None:
    path = models / "model_patches" / tiny_zimage_fun.TEMPLATE_FILE
    assert zimage_fun_control.is_zimage_fun(TensorSource(path))
    net = load_zimage_fun(path, CPU, torch.float32)
    assert (len(net.control_layers), len(net.control_noise_refiner), net.in_dim, net.refiner_control) == (2, 2, 16,
                                                                                                          False)
    union = load_zimage_fun(models / "model_patches" / "fun21.safetensors", CPU, torch.float32)
    assert (len(union.control_layers), union.in_dim, union.refiner_control) == (15, 33, True)
    with pytest.raises(ModelError, match="not a Z-Image Fun ControlNet"):
        load_zimage_fun(models / "vae" / tiny_zimage.VAE, CPU, torch.float32)


def _call(model: Any, patches: list[FunPatch], x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
    with fun_controls(model, patches):
        return zimage.zimage_fn(model)(x, torch.tensor([0.4]), ctx, None)


def test_strength_zero_is_the_plain_model_and_a_control_changes_it(models: Path, model: Any) -> None:
    net = load_zimage_fun(models / "model_patches" / tiny_zimage_fun.TEMPLATE_FILE, CPU, torch.float32)
    gen = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 16, 8, 8, generator=gen), torch.randn(1, 5, 64, generator=gen)
    latent = torch.randn(1, 16, 8, 8, generator=gen)
    plain = zimage.zimage_fn(model)(x, torch.tensor([0.4]), ctx, None)
    assert torch.equal(_call(model, [FunPatch(net, latent, 0.0)], x, ctx), plain)
    controlled = _call(model, [FunPatch(net, latent, 0.8)], x, ctx)
    assert not torch.allclose(controlled, plain, atol=1e-5)
    assert torch.equal(_call(model, [FunPatch(net, latent, 0.8)], x, ctx), controlled)  # no state across calls


def _trace(net: Any, refiners: int, blocks: int) -> list[tuple[str, int]]:
    """Where a patch adds to the tokens over one call of a model with these block counts."""
    patch = FunPatch(net, torch.randn(1, net.in_dim, 4, 4), 1.0)
    dim = net.control_all_x_embedder["2-1"].out_features
    tokens, adaln = torch.randn(1, 4, dim), torch.randn(1, min(dim, 256))
    freqs = torch.ones(1, 4, 32, dtype=torch.complex64)  # identity rotation
    added = []
    for i in range(refiners):
        if not torch.equal(patch.after_refiner(i, tokens, tokens, freqs, adaln), tokens):
            added.append(("refiner", i))
    for i in range(blocks):
        if not torch.equal(patch.after_block(i, tokens, tokens, freqs, adaln), tokens):
            added.append(("block", i))
    return added


def test_control_blocks_land_where_comfyui_puts_them(models: Path) -> None:
    v1 = tiny_zimage_fun.make_tiny_zimage_fun(models / "model_patches" / "v1_6.safetensors", seed=6,
                                              dtype=torch.float32, control_layers=6, dim=64, heads=1)
    six = load_zimage_fun(v1, CPU, torch.float32)
    # the 1.0 union (6 blocks) on Z-Image's 2 refiner and 30 main blocks: after main blocks 0, 5, …, 25
    assert _trace(six, 2, 30) == [("block", i) for i in range(0, 30, 5)]
    union = tiny_zimage_fun.make_tiny_zimage_fun(models / "model_patches" / "u15.safetensors", seed=7,
                                                 dtype=torch.float32, control_layers=15, dim=64, heads=1,
                                                 refiner_control=True, in_dim=33)
    fifteen = load_zimage_fun(union, CPU, torch.float32)
    # the 2.1 union (15 blocks, refiner control): after both refiner blocks and main blocks 0, 2, …, 28
    assert _trace(fifteen, 2, 30) == [("refiner", 0), ("refiner", 1)] + [("block", i) for i in range(0, 30, 2)]


@pytest.fixture
def fun_ctx(models: Path, model_cache: ModelCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> NodeContext:
    """A home of its own (the shared tiny home's folders stay as other tests list them)."""
    monkeypatch.setenv("COMFYMESH_ARTIFACTS_URL", (tmp_path / "artifacts").as_uri())
    return NodeContext(job_id="job", node_id="7", class_type="test", home=models.parent)


def _velocity(ctx: NodeContext, model: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
    sm = apply_model_sampling(ctx, model, get_model_cache().sampling_model(checkpoint_of(ctx, model),
                                                                            loras_of(ctx, model)))
    text = torch.randn(1, 5, 64, generator=torch.Generator().manual_seed(5))
    out: torch.Tensor = sm.unet(x, torch.tensor([0.6]), text, None)
    return out


def test_nodes_run_the_fun_controlnet_in_the_zimage_call(fun_ctx: NodeContext) -> None:
    ctx = fun_ctx
    (model,) = loaders.unet_loader(ctx, unet_name=tiny_zimage.DIFFUSION_MODEL, weight_dtype="default")
    (vae,) = loaders.vae_loader(ctx, vae_name=tiny_zimage.VAE)
    (patch,) = diffsynth.model_patch_loader(ctx, name=tiny_zimage_fun.TEMPLATE_FILE)
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(2))
    image = np.random.default_rng(0).random((1, 64, 64, 3)).astype(np.float32)
    plain = _velocity(ctx, model, x)
    (zero,) = diffsynth.qwen_image_diffsynth_controlnet(ctx, model=model, model_patch=patch, vae=vae, image=image,
                                                        strength=0.0)
    assert torch.equal(_velocity(ctx, zero, x), plain)
    (one,) = diffsynth.qwen_image_diffsynth_controlnet(ctx, model=model, model_patch=patch, vae=vae, image=image,
                                                       strength=1.0)
    controlled = _velocity(ctx, one, x)
    assert not torch.allclose(controlled, plain, atol=1e-5)
    # a latent of another size re-encodes the image scaled to it
    wide = torch.randn(1, 16, 8, 12, generator=torch.Generator().manual_seed(3))
    assert _velocity(ctx, one, wide).shape == wide.shape
    with pytest.raises(NodeInputError, match="inpainting Z-Image Fun union"):
        diffsynth.qwen_image_diffsynth_controlnet(ctx, model=model, model_patch=patch, vae=vae, image=image,
                                                  strength=1.0, mask=np.ones((1, 64, 64), np.float32))
