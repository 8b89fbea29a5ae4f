"""Tiny random-weight Qwen-Image InstantX ControlNets in the real key layout (Qwen-Image's `img_in`, `txt_in`,
`txt_norm`, `time_text_embed`, `transformer_blocks.N`, then `controlnet_blocks.N` and `controlnet_x_embedder`),
under the names the official templates load, sized for tiny_qwen_image's model (width 64, 2 heads, text width 32).
The inpainting net's hint embedder takes the mask channel too (68 wide, the real nets' 64 + 4). The loader knows
them by keys and shapes only.

Usage: `python -m comfymesh.diffusion.models.tiny_qwen_controlnet <models folder>` writes controlnet/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file

from comfymesh.diffusion.models.tiny_qwen_image import LATENT_CHANNELS, qwen_image_shapes, tensors

INPAINTING = "Qwen-Image-InstantX-ControlNet-Inpainting.safetensors"
UNION = "Qwen-Image-InstantX-ControlNet-Union.safetensors"


def qwen_controlnet_shapes(dim: int = 64, heads: int = 2, layers: int = 2, text_dim: int = 32,
                           mask_channels: int = 0) -> dict[str, tuple[int, ...]]:
    """Every tensor of an InstantX Qwen-Image ControlNet (the real ones: width 3072, 24 heads, 5 or 6 blocks, text
    width 3584); `mask_channels` 1 for the inpainting net."""
    s = {k: v for k, v in qwen_image_shapes(dim, heads, layers, text_dim).items()
         if not k.startswith(("norm_out.", "proj_out."))}  # no final layer
    s["controlnet_x_embedder.weight"] = (dim, 4 * (LATENT_CHANNELS + mask_channels))
    s["controlnet_x_embedder.bias"] = (dim,)
    for i in range(layers):
        s[f"controlnet_blocks.{i}.weight"] = (dim, dim)
        s[f"controlnet_blocks.{i}.bias"] = (dim,)
    return s


def make_tiny_qwen_controlnets(models: str | Path, seed: int = 0, dtype: torch.dtype = torch.bfloat16,
                               ) -> dict[str, Path]:
    """The inpainting and union nets under `models`/controlnet; returns their paths by kind."""
    folder = Path(models) / "controlnet"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for k, (kind, name, mask) in enumerate((("inpainting", INPAINTING, 1), ("union", UNION, 0))):
        path = folder / name
        save_file(tensors(qwen_controlnet_shapes(mask_channels=mask), seed + 11 + k, dtype), str(path),
                  metadata={"format": "pt"})
        paths[kind] = path
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path in make_tiny_qwen_controlnets(args.models, args.seed).values():
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
