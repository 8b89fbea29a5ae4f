"""Chroma Radiance: recognised by keys and shapes (not by Chroma), the patch convolution fed to the transformer as
its patch linear, the NeRF head's DCT code and generated-weight GLU as ComfyUI computes them, the x0 variant's
velocity, whole-patch padding cropped back, and the pixel_space VAE."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from comfymesh.diffusion.families import chroma, chroma_radiance
from comfymesh.diffusion.latents import pixel_space
from comfymesh.diffusion.models.nerf_head import dct_code
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.models.tiny_chroma_radiance import make_tiny_chroma_radiance

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("radiance")
    return {"x0": make_tiny_chroma_radiance(root, seed=1),
            "plain": make_tiny_chroma_radiance(root, seed=1, name="plain.safetensors", x0=False),
            "linear": make_tiny_chroma_radiance(root, seed=1, name="linear.safetensors", conv_head=False)}


def _model(path: Path) -> Any:
    src = TensorSource(path)
    layout = chroma_radiance.parse_radiance(src)
    assert layout is not None
    return chroma_radiance.load_radiance(src, layout, CPU)


def test_recognised_by_shapes_and_not_taken_for_chroma(files: dict[str, Path]) -> None:
    src = TensorSource(files["x0"])
    layout = chroma_radiance.parse_radiance(src)
    assert layout is not None and layout.x0 and layout.patch == 16 and layout.channels == 3
    assert (layout.nerf.width, layout.nerf.depth, layout.nerf.mlp_ratio, layout.nerf.freqs) == (8, 2, 2, 4)
    assert layout.nerf.conv_head and not chroma_radiance.parse_radiance(TensorSource(files["linear"])).nerf.conv_head  # type: ignore[union-attr]
    assert chroma.parse_chroma(src) is None
    assert not chroma_radiance.parse_radiance(TensorSource(files["plain"])).x0  # type: ignore[union-attr]


def test_the_patch_convolution_is_the_transformers_patch_linear(files: dict[str, Path]) -> None:
    model = _model(files["plain"])
    src = TensorSource(files["plain"])
    img = torch.randn(1, 3, 32, 48)
    conv = F.conv2d(img, src.get("img_in_patch.weight").float(), src.get("img_in_patch.bias").float(), stride=16)
    tokens = F.unfold(img, kernel_size=16, stride=16).transpose(1, 2)
    torch.testing.assert_close(model.transformer.x_embedder(tokens), conv.flatten(2).transpose(1, 2))


def test_dct_code_is_comfyuis_formula() -> None:
    code = dct_code(4, 3)  # pixel (row y, column x) at index 4·y + x; frequency (fx, fy) at 3·fx + fy
    pos = torch.linspace(0, 1, 4)
    y, x, fx, fy = 2, 1, 2, 1
    expected = torch.cos(pos[x] * fx * torch.pi) * torch.cos(pos[y] * fy * torch.pi) / (1 + fx * fy)
    torch.testing.assert_close(code[4 * y + x, 3 * fx + fy], expected)
    assert code.shape == (16, 9) and torch.allclose(code[:, 0], torch.ones(16))


def test_a_nerf_block_is_a_glu_with_generated_normalised_weights(files: dict[str, Path]) -> None:
    block = _model(files["plain"]).head.nerf_blocks[0]
    x, s = torch.randn(3, 16, 8), torch.randn(3, 256)
    out = block(x, s)
    row = 1
    gate, value, proj = block.param_generator(s[row]).chunk(3)
    gate = F.normalize(gate.view(8, 16), dim=0)
    value = F.normalize(value.view(8, 16), dim=0)
    proj = F.normalize(proj.view(16, 8), dim=0)
    normed = x[row] * torch.rsqrt(x[row].pow(2).mean(-1, keepdim=True) + 1e-6) * block.norm.scale
    torch.testing.assert_close(out[row], (F.silu(normed @ gate) * (normed @ value)) @ proj + x[row])


def test_the_x0_variant_answers_the_velocity(files: dict[str, Path]) -> None:
    x, ctx, t = torch.randn(2, 3, 32, 32), torch.randn(2, 5, 64), torch.tensor([0.8, 0.3])
    plain = chroma_radiance.radiance_fn(_model(files["plain"]))(x, t, ctx, None)
    x0 = chroma_radiance.radiance_fn(_model(files["x0"]))(x, t, ctx, None)
    torch.testing.assert_close(x0, (x - plain) / t.view(-1, 1, 1, 1))


def test_partial_patches_are_padded_circularly_and_cropped(files: dict[str, Path]) -> None:
    fn = chroma_radiance.radiance_fn(_model(files["plain"]))
    x, ctx, t = torch.randn(1, 3, 40, 24), torch.randn(1, 5, 64), torch.tensor([0.5])
    out = fn(x, t, ctx, None)
    padded = fn(F.pad(x, (0, 8, 0, 8), mode="circular"), t, ctx, None)
    assert out.shape == x.shape
    torch.testing.assert_close(out, padded[:, :, :40, :24])


def test_pixel_space_vae_maps_images_to_minus_one_one_and_back() -> None:
    image = torch.rand(2, 8, 6, 4)  # RGBA: the alpha is dropped
    latent = pixel_space.encode(image)
    assert latent.shape == (2, 3, 8, 6) and latent.min() >= -1 and latent.max() <= 1
    torch.testing.assert_close(pixel_space.decode(latent), image[..., :3])
    assert pixel_space.decode(torch.full((1, 3, 2, 2), 3.0)).eq(1).all()
