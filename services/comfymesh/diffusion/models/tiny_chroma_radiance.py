"""A tiny random-weight Chroma Radiance diffusion model in ComfyUI's key layout: tiny_flux's Chroma without
`img_in` and `final_layer`, with the patch convolution `img_in_patch` (16×16 RGB patches, as released) and a small
NeRF head (`nerf_image_embedder`, `nerf_blocks.N`, `nerf_final_layer_conv`; the released head is 64 wide, 4 deep,
MLP ratio 4, 8 DCT frequencies, which the loader reads from shapes as it reads these), under the name the official
template loads (`chroma-radiance-x0.safetensors`, with the x0 variant's `__x0__` marker). Its text encoder is
tiny_flux's T5.

Usage: `python -m comfymesh.diffusion.models.tiny_chroma_radiance <models folder>` writes diffusion_models/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file

from comfymesh.diffusion.models.tiny_flux import Shapes, chroma_shapes, random_tensors

TEMPLATE_MODEL = "chroma-radiance-x0.safetensors"
PATCH = 16
CHANNELS = 3


def radiance_shapes(width: int = 256, head_dim: int = 128, nerf_width: int = 8, nerf_depth: int = 2, ratio: int = 2,
                    freqs: int = 4, conv_head: bool = True, x0: bool = True) -> Shapes:
    s = {k: v for k, v in chroma_shapes(width, head_dim).items() if not k.startswith(("img_in.", "final_layer."))}
    s["img_in_patch.weight"] = (width, CHANNELS, PATCH, PATCH)
    s["img_in_patch.bias"] = (width,)
    s["nerf_image_embedder.embedder.0.weight"] = (nerf_width, CHANNELS + freqs**2)
    s["nerf_image_embedder.embedder.0.bias"] = (nerf_width,)
    for i in range(nerf_depth):
        s[f"nerf_blocks.{i}.param_generator.weight"] = (3 * nerf_width**2 * ratio, width)
        s[f"nerf_blocks.{i}.param_generator.bias"] = (3 * nerf_width**2 * ratio,)
        s[f"nerf_blocks.{i}.norm.scale"] = (nerf_width,)
    if conv_head:
        s |= {"nerf_final_layer_conv.norm.scale": (nerf_width,),
              "nerf_final_layer_conv.conv.weight": (CHANNELS, nerf_width, 3, 3),
              "nerf_final_layer_conv.conv.bias": (CHANNELS,)}
    else:
        s |= {"nerf_final_layer.norm.scale": (nerf_width,), "nerf_final_layer.linear.weight": (CHANNELS, nerf_width),
              "nerf_final_layer.linear.bias": (CHANNELS,)}
    if x0:
        s["__x0__"] = (0,)
    return s


def make_tiny_chroma_radiance(models: str | Path, seed: int = 0, name: str = TEMPLATE_MODEL,
                              **options: bool) -> Path:
    """The model under `models`/diffusion_models/`name`; `options` as radiance_shapes takes them."""
    path = Path(models) / "diffusion_models" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(random_tensors(radiance_shapes(**options), seed + 21, torch.bfloat16), str(path),
              metadata={"format": "pt"})
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(make_tiny_chroma_radiance(args.models, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
