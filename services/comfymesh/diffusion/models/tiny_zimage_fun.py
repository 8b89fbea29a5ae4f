"""Tiny random-weight Z-Image Fun ControlNets in alibaba-pai's key layout (`control_layers.N`,
`control_noise_refiner.N`, `control_all_x_embedder.2-1`), as wide as tiny_zimage's model (256, 64-wide heads):
the 1.0 union's form (plain refiner blocks) under the template's file name in models/model_patches/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from comfymesh.diffusion.models.tiny_zimage import _tensors
from comfymesh.diffusion.models.zimage_fun_control import FunControlNet

TEMPLATE_FILE = "Z-Image-Turbo-Fun-Controlnet-Union.safetensors"


def fun_shapes(dim: int = 256, heads: int = 4, control_layers: int = 2, refiners: int = 2, in_dim: int = 16,
               refiner_control: bool = False) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        net = FunControlNet(dim, heads, control_layers, refiners, in_dim, refiner_control)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def make_tiny_zimage_fun(path: str | Path, seed: int = 0, dtype: torch.dtype = torch.bfloat16, **shape: Any) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(_tensors(fun_shapes(**shape), seed, dtype), str(out), metadata={"format": "pt"})
    return out


def make_template_files(models: str | Path, seed: int = 0) -> list[Path]:
    """The Z-Image Fun union ControlNet under models/model_patches/."""
    return [make_tiny_zimage_fun(Path(models) / "model_patches" / TEMPLATE_FILE, seed)]
