"""Checkpoint recognition and classified load errors (§2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.models.checkpoint import load_checkpoint
from comfymesh.diffusion.models.recognise import recognise
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.models.tiny_checkpoint import make_state_dict, make_tiny_checkpoint


@pytest.mark.parametrize(
    ("family", "expected", "prediction", "clips"),
    [("sd15", "sd1", "eps", ("l",)), ("sd2", "sd2", "eps", ("h",)), ("sd2v", "sd2", "v", ("h",)),
     ("sdxl", "sdxl", "eps", ("l", "g"))],
)
def test_tiny_layouts_recognised(tmp_path: Path, family: str, expected: str, prediction: str,
                                 clips: tuple[str, ...]) -> None:
    path = make_tiny_checkpoint(tmp_path / f"{family}.safetensors", family, seed=3)
    rec = recognise(TensorSource(path))
    assert (rec.family, rec.prediction) == (expected, prediction)
    assert tuple(c.role for c in rec.clips) == clips


def test_sizes_come_from_shapes(tmp_path: Path) -> None:
    rec = recognise(TensorSource(make_tiny_checkpoint(tmp_path / "x.safetensors", "sdxl")))
    u = rec.unet
    assert (u.model_channels, u.level_channels, u.res_blocks) == (32, (32, 32, 64), 1)
    assert (u.depth, u.up_depth, u.mid_depth) == ((0, 0, 2), (2, 0, 0), 2)
    assert (u.context_dim, u.adm, u.linear_proj) == (64, 32 + 1536, True)
    assert [(c.width, c.layers, c.vocab) for c in rec.clips] == [(32, 3, 49408), (32, 3, 49408)]
    assert rec.vae is not None and rec.vae.level_channels == (32, 32, 32, 32)


def test_sdxl_vpred_marker(tmp_path: Path) -> None:
    path = make_tiny_checkpoint(tmp_path / "v.safetensors", "sdxl", vpred=True)
    assert recognise(TensorSource(path)).prediction == "v"


def test_load_builds_modules(tmp_path: Path) -> None:
    parts = load_checkpoint(make_tiny_checkpoint(tmp_path / "a.safetensors", "sd15", seed=1))
    unet: Any = parts.unet
    assert unet.config.cross_attention_dim == 32
    assert set(parts.clips) == {"l"}
    assert parts.unet_modules["input_blocks.3.1.proj_in"] == "down_blocks.1.attentions.0.proj_in"
    assert all(p.dtype == torch.float32 for p in parts.unet.parameters())


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + b"\0" * 64)
    with pytest.raises(ModelError, match=r"corrupt\.safetensors.*not a readable"):
        load_checkpoint(path)


def test_truncated_file(tmp_path: Path) -> None:
    path = make_tiny_checkpoint(tmp_path / "trunc.safetensors", "sd15")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"trunc\.safetensors.*(truncated|not a readable)") as info:
        load_checkpoint(path)
    assert info.value.non_retryable


def test_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    save_file({"encoder.weight": torch.zeros(4, 4), "decoder.bias": torch.zeros(4)}, str(path))
    with pytest.raises(ModelError, match=r"not a Stable Diffusion checkpoint.*2 tensors"):
        load_checkpoint(path)


def test_unknown_architecture(tmp_path: Path) -> None:
    sd = make_state_dict("sd15", seed=0)
    # a UNet whose cross-attention width matches no text encoder in the file
    sd = {k: v for k, v in sd.items() if not k.startswith("cond_stage_model.")}
    path = tmp_path / "odd.safetensors"
    save_file(sd, str(path))
    with pytest.raises(ModelError, match=r"odd\.safetensors: unknown architecture \(context_dim=32"):
        load_checkpoint(path)


def test_an_unknown_input_channel_count_is_named(tmp_path: Path) -> None:
    # 4 (txt2img), 8 (instruct-pix2pix) and 9 (inpainting) input channels load; anything else is named
    sd = make_state_dict("sd15", seed=0)
    key = "model.diffusion_model.input_blocks.0.0.weight"
    sd[key] = torch.zeros(sd[key].shape[0], 7, 3, 3, dtype=sd[key].dtype)
    path = tmp_path / "odd.safetensors"
    save_file(sd, str(path))
    with pytest.raises(ModelError, match=r"unknown model \(7 UNet input channels\)"):
        load_checkpoint(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")
