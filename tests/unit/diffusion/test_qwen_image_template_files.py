"""The tiny files the Qwen-Image Edit 2509/2511 and FireRed templates load: each name is recognised as the variant
its real file is (2511's carry the timestep-zero marker), and each template LoRA is a real LoRA fitting its model."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfymesh.diffusion.families import registry
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.models.tiny_lora import TEMPLATE_LORAS, make_template_loras
from comfymesh.diffusion.models.tiny_qwen_image import TEMPLATE_MODELS, TEMPLATE_MODELS_2511, make_template_files


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    make_template_files(root, seed=1)
    make_template_loras(root, seed=1)
    return root


@pytest.mark.parametrize("name", [*TEMPLATE_MODELS, *TEMPLATE_MODELS_2511])
def test_template_model_is_its_variant(models: Path, name: str) -> None:
    found = registry.recognise(TensorSource(models / "diffusion_models" / name))
    assert found is not None
    family, layout = found
    assert family.name == "qwen_image"
    assert layout.variant == ("Edit 2511" if name in TEMPLATE_MODELS_2511 else "base/Edit")


def test_edit_template_loras_fit_their_models(models: Path) -> None:
    edit = {n: m for n, (m, _) in TEMPLATE_LORAS.items() if "Edit" in m or "edit" in m}
    assert len(edit) >= 11
    for name in edit:
        lora = TensorSource(models / "loras" / name)
        assert len(lora.keys) > 10, name  # real low-rank pairs, not a placeholder tensor
