"""Tiny random-weight Qwen-Image DiffSynth ControlNet patches in the real key layout (`img_in`,
`controlnet_blocks.N.{x_rms,y_rms,input_proj,output_proj}`), under the names the official template and the
DiffSynth release use, sized for tiny_qwen_image's model (width 64, 2 blocks). The inpaint patch takes one mask
channel more (image input 68 wide). The loader knows them by keys and shapes only.

Usage: `python -m comfymesh.diffusion.models.tiny_diffsynth <models folder>` writes model_patches/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file

from comfymesh.diffusion.models.tiny_qwen_image import tensors

CANNY = "qwen_image_canny_diffsynth_controlnet.safetensors"
DEPTH = "qwen_image_depth_diffsynth_controlnet.safetensors"
INPAINT = "qwen_image_inpaint_diffsynth_controlnet.safetensors"


def diffsynth_shapes(dim: int = 64, blocks: int = 2, additional_in_dim: int = 0) -> dict[str, tuple[int, ...]]:
    """Every tensor of a DiffSynth blockwise ControlNet (the real ones: width 3072, 60 blocks; inpaint 4 extra
    input channels)."""
    s: dict[str, tuple[int, ...]] = {"img_in.weight": (dim, 64 + additional_in_dim), "img_in.bias": (dim,)}
    for i in range(blocks):
        p = f"controlnet_blocks.{i}."
        s |= {p + "x_rms.weight": (dim,), p + "y_rms.weight": (dim,),
              p + "input_proj.weight": (dim, dim), p + "input_proj.bias": (dim,),
              p + "output_proj.weight": (dim, dim), p + "output_proj.bias": (dim,)}
    return s


def make_tiny_diffsynth(models: str | Path, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> dict[str, Path]:
    """The canny, depth and inpaint patches under `models`/model_patches; returns their paths by kind."""
    folder = Path(models) / "model_patches"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for k, (kind, name, extra) in enumerate((("canny", CANNY, 0), ("depth", DEPTH, 0), ("inpaint", INPAINT, 4))):
        weights = tensors(diffsynth_shapes(additional_in_dim=extra), seed + 100 + k, dtype)  # RMS gains near 1
        paths[kind] = folder / name
        save_file(weights, str(paths[kind]), metadata={"format": "pt"})
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m comfymesh.diffusion.models.tiny_diffsynth",
                                     description="Write tiny random-weight Qwen-Image DiffSynth patches.")
    parser.add_argument("models", type=Path, help="models folder (model_patches/ inside)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path in make_tiny_diffsynth(args.models, args.seed).values():
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
