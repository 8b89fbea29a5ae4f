"""The model-folder registry: aliases, safe suffixes, containment and ComfyUI's extra_model_paths.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfymesh.catalog.model_folders import ExtraPathsError, ModelFolders, canonical


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_aliases_and_suffixes(tmp_path: Path) -> None:
    _touch(tmp_path / "models" / "clip" / "t5.safetensors")
    _touch(tmp_path / "models" / "text_encoders" / "qwen.sft")
    _touch(tmp_path / "models" / "text_encoders" / "evil.ckpt")  # pickle: never listed or loaded
    _touch(tmp_path / "models" / "checkpoints" / "sd.safetensors")
    folders = ModelFolders.load(tmp_path)
    assert canonical("clip") == canonical("text_encoders") == "text_encoders"
    assert canonical("custom_nodes") is None
    assert sorted(name for _, names in folders.walk("clip") for name in names) == ["qwen.sft", "t5.safetensors"]
    assert folders.resolve("text_encoders", "t5.safetensors") == tmp_path / "models" / "clip" / "t5.safetensors"
    assert folders.resolve("text_encoders", "evil.ckpt") is None
    assert folders.resolve("text_encoders", "../checkpoints/sd.safetensors") is None


def test_extra_model_paths_in_comfyui_format(tmp_path: Path) -> None:
    elsewhere = tmp_path / "comfy"
    _touch(elsewhere / "models" / "unet" / "flux.safetensors")
    _touch(elsewhere / "more_loras" / "a.safetensors")
    _touch(tmp_path / "absolute" / "b.safetensors")
    config = tmp_path / "home" / "extra_model_paths.yaml"
    config.parent.mkdir()
    config.write_text(f"""
comfyui:
    base_path: ../comfy
    is_default: true
    diffusion_models: models/unet
    loras: |
        more_loras
        {tmp_path / "absolute"}
    custom_nodes: custom_nodes/
""")
    folders = ModelFolders.load(tmp_path / "home", config)
    assert folders.resolve("unet", "flux.safetensors") == elsewhere / "models" / "unet" / "flux.safetensors"
    assert sorted(name for _, names in folders.walk("loras") for name in names) == ["a.safetensors", "b.safetensors"]


@pytest.mark.parametrize("text", ["- a list", "x: 3", "x:\n  loras: 5", "x: ["])
def test_bad_extra_paths_name_the_file(tmp_path: Path, text: str) -> None:
    config = tmp_path / "extra.yaml"
    config.write_text(text)
    with pytest.raises(ExtraPathsError, match=r"extra\.yaml"):
        ModelFolders.load(tmp_path, config)
