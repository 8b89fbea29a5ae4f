"""Qwen-Image's VAE (the Wan 2.1 VAE in ComfyUI's layout) and its latent format: recognised from shapes at any
base width, converted to diffusers' AutoencoderKLQwenImage with every weight placed, called as ComfyUI calls it
(a batch of images is one clip; 5-D latents; frames out per latent frame), and the per-channel normalisation
against ComfyUI's Wan21 numbers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from comfymesh.diffusion.latents.wan21 import WAN21
from comfymesh.diffusion.models import wan_vae
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.models.tiny_qwen_image import tensors, wan21_vae_shapes

CPU = torch.device("cpu")


def _vae_file(tmp_path: Path, dim: int = 8, name: str = "vae.safetensors") -> TensorSource:
    path = tmp_path / name
    save_file(tensors(wan21_vae_shapes(dim), 0, torch.float32), str(path))
    return TensorSource(path)


@pytest.mark.parametrize("dim", [4, 8])
def test_any_base_width_loads_with_every_weight_placed(tmp_path: Path, dim: int) -> None:
    src = _vae_file(tmp_path, dim)
    assert wan_vae.parse_wan21_vae(src) == wan_vae.Wan21VaeLayout(dim, 16, 3)
    vae = wan_vae.load_wan21_vae(src, CPU)  # a missing or unexpected key raises ModelError
    assert sum(p.numel() for p in vae.parameters()) == sum(
        int(torch.tensor(s).prod()) for s in wan21_vae_shapes(dim).values())


def test_other_vaes_are_not_wan21(tmp_path: Path) -> None:
    path = tmp_path / "wan22.safetensors"
    save_file({"decoder.middle.0.residual.0.gamma": torch.ones(4, 1, 1, 1),
               "decoder.upsamples.0.upsamples.0.residual.2.weight": torch.ones(1)}, str(path))
    assert wan_vae.parse_wan21_vae(TensorSource(path)) is None
    sd = tmp_path / "sd.safetensors"
    save_file({"decoder.conv_in.weight": torch.ones(1)}, str(sd))
    assert wan_vae.parse_wan21_vae(TensorSource(sd)) is None


def test_a_batch_is_one_clip_and_frames_come_back_as_images(tmp_path: Path) -> None:
    vae = wan_vae.load_wan21_vae(_vae_file(tmp_path), CPU)
    one = torch.rand(1, 35, 42, 3, generator=torch.Generator().manual_seed(0))
    latent = wan_vae.encode(vae, one)
    assert latent.shape == (1, 16, 1, 4, 5)  # 35×42 centre-cropped to 32×40
    assert torch.equal(latent, wan_vae.encode(vae, one))  # the posterior's mean, no sampling
    five = torch.rand(5, 16, 16, 3, generator=torch.Generator().manual_seed(1))
    assert wan_vae.encode(vae, five).shape == (1, 16, 2, 2, 2)  # frames 1 + ⌊(5 − 1)/4⌋
    images = wan_vae.decode(vae, latent)
    assert images.shape == (1, 32, 40, 3) and float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert torch.equal(wan_vae.decode(vae, latent[:, :, 0]), images)  # a 4-D latent is one frame
    assert wan_vae.decode(vae, torch.zeros(2, 16, 2, 2, 2)).shape == (2 * 5, 16, 16, 3)  # 1 + 4·(2 − 1) frames each


def test_calls_at_once_on_one_vae_give_what_each_gives_alone(tmp_path: Path) -> None:
    # the module keeps its frame caches on itself: parallel branches of one graph (a VAEEncode beside
    # TextEncodeQwenImageEditPlus's reference latent) once read each other's caches and failed
    vae = wan_vae.load_wan21_vae(_vae_file(tmp_path), CPU)
    clips = [torch.rand(5, 32, 32, 3, generator=torch.Generator().manual_seed(seed)) for seed in range(4)]
    latents = [torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(seed)) for seed in range(4)]
    alone = [wan_vae.encode(vae, c) for c in clips] + [wan_vae.decode(vae, z) for z in latents]
    calls = [lambda c=c: wan_vae.encode(vae, c) for c in clips] + [lambda z=z: wan_vae.decode(vae, z) for z in latents]
    with ThreadPoolExecutor(len(calls)) as pool:
        for _ in range(3):
            together = list(pool.map(lambda call: call(), calls))
            assert all(torch.equal(a, b) for a, b in zip(alone, together, strict=True))


def _conv3d_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    calls: list[tuple[int, ...]] = []
    conv3d = torch.nn.Conv3d._conv_forward

    def counted(self: torch.nn.Conv3d, x: torch.Tensor, *args: Any) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return conv3d(self, x, *args)

    monkeypatch.setattr(torch.nn.Conv3d, "_conv_forward", counted)
    return calls


@pytest.mark.parametrize("frames", [1, 5])
def test_a_lone_first_frame_convolves_in_2d_as_the_causal_3d_kernel_would(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, frames: int) -> None:
    src = _vae_file(tmp_path)
    fast, plain = wan_vae.load_wan21_vae(src, CPU), wan_vae.load_wan21_vae(src, CPU)
    for conv in plain.modules():
        conv.__dict__.pop("forward", None)  # diffusers' own forward: every frame after two of causal zeros
    clip = torch.rand(frames, 48, 40, 3, generator=torch.Generator().manual_seed(0))
    z = torch.randn(1, 16, 1 + (frames - 1) // 4, 6, 5, generator=torch.Generator().manual_seed(1))
    calls = _conv3d_calls(monkeypatch)
    latent, image = wan_vae.encode(fast, clip), wan_vae.decode(fast, z)
    fast_calls = list(calls)
    torch.testing.assert_close(latent, wan_vae.encode(plain, clip), rtol=0, atol=1e-5)
    torch.testing.assert_close(image, wan_vae.decode(plain, z), rtol=0, atol=1e-5)
    assert len(calls) > len(fast_calls)  # the plain module did convolve in 3-D
    if frames == 1:  # a still image never meets a 3-D convolution
        assert fast_calls == []
    else:  # the frames after the first keep the 3-D path, with the frames before them cached
        assert fast_calls and all(shape[2] > 1 for shape in fast_calls)


def test_layered_rgba_vae_pads_rgb_with_opaque_alpha(tmp_path: Path) -> None:
    # ComfyUI's VAE pads an image with fewer channels than the VAE takes with 1.0 (its pad_channel_value)
    path = tmp_path / "layered.safetensors"
    save_file(tensors(wan21_vae_shapes(8, image_channels=4), 0, torch.float32), str(path))
    src = TensorSource(path)
    assert wan_vae.parse_wan21_vae(src) == wan_vae.Wan21VaeLayout(8, 16, 4)
    vae = wan_vae.load_wan21_vae(src, CPU)
    rgb = torch.rand(1, 16, 24, 3, generator=torch.Generator().manual_seed(2))
    rgba = torch.cat([rgb, torch.ones(1, 16, 24, 1)], dim=-1)
    assert torch.equal(wan_vae.encode(vae, rgb), wan_vae.encode(vae, rgba))
    assert not torch.equal(wan_vae.encode(vae, rgb), wan_vae.encode(vae, torch.cat([rgb, rgb[..., :1]], dim=-1)))
    assert wan_vae.decode(vae, wan_vae.encode(vae, rgb)).shape == (1, 16, 24, 4)  # RGBA back


def test_wan21_format_normalises_each_channel() -> None:
    z = torch.zeros(1, 16, 1, 1, 1)
    z[0, 0] = 1.0
    z[0, 15] = -2.0
    scaled = WAN21.process_in(z)
    assert float(scaled[0, 0]) == pytest.approx((1.0 + 0.7571) / 2.8184)
    assert float(scaled[0, 15]) == pytest.approx((-2.0 + 0.2921) / 1.9160)
    assert float(scaled[0, 7]) == pytest.approx(-1.5508 / 2.0743)
    assert torch.allclose(WAN21.process_out(scaled), z, atol=1e-6)
    four = WAN21.process_in(z[:, :, 0])  # a 4-D latent gets the same per-channel numbers
    assert torch.equal(four, scaled[:, :, 0])
    assert WAN21.channels == 16 and WAN21.dimensions == 3


def test_tiled_nodes_refuse_the_wan_vae(tmp_path: Path, node_ctx: Any) -> None:
    from comfymesh.contracts.errors import NodeInputError
    from comfymesh.diffusion.nodes import vae as vae_nodes

    vae = wan_vae.load_wan21_vae(_vae_file(tmp_path), CPU)
    with pytest.raises(NodeInputError, match="not supported yet"):
        vae_nodes._untiled_wan(node_ctx, vae)


def test_a_decode_out_of_gpu_memory_is_a_retryable_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As every other VAE's decode: out of memory is ResourceExhaustedError (the job may be retried when the
    device has room), not a crash of the node."""
    from comfymesh.contracts.errors import ResourceExhaustedError

    vae = wan_vae.load_wan21_vae(_vae_file(tmp_path), CPU)

    def out_of_memory(*args: object) -> object:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    monkeypatch.setattr(vae, "decode", out_of_memory)
    with pytest.raises(ResourceExhaustedError, match="out of GPU memory in VAE decode"):
        wan_vae.decode(vae, torch.zeros(1, 16, 1, 2, 2))
