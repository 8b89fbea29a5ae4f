"""Chroma Radiance's model call on a GPU (issue 15): the released transformer (Chroma's 3072 wide, 19 + 38 blocks,
T5 width 4096) on 16×16 RGB patches and the NeRF head (64 wide, 4 blocks, MLP ratio 4, 8 DCT frequencies, conv
head), with random weights drawn on the device (no files, no hub), eager as the family runs it.

Run (repository root, CUDA machine): `python bench/radiance_gpu.py --out radiance.json`
CPU smoke test: `python bench/radiance_gpu.py --device cpu --small`

Measured per call at --size² pixels, batch 2 (cfg's cond and uncond), bf16 on CUDA:
  call_ms     the whole call (transformer, NeRF head, x0 → velocity)
  head_ms     the NeRF head alone on the transformer's hidden states
  model_gib   the weights
  peak_gib    torch.cuda.max_memory_allocated
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench.model_calls import built, device_name, gib, report, timed

RELEASED = {"width": 3072, "head_dim": 128, "depth": 19, "single": 38, "context": 4096, "hidden": 5120, "layers": 5,
            "nerf": 64, "nerf_depth": 4, "ratio": 4, "freqs": 8}
SMALL = {"width": 128, "head_dim": 64, "depth": 1, "single": 1, "context": 32, "hidden": 32, "layers": 2,
         "nerf": 8, "nerf_depth": 2, "ratio": 2, "freqs": 4}
PATCH = 16


def build(s: dict[str, int], device: torch.device, dtype: torch.dtype) -> Any:
    from diffusers import ChromaTransformer2DModel

    from comfymesh.diffusion.families import chroma, chroma_radiance
    from comfymesh.diffusion.models.nerf_head import NerfHead, NerfLayout

    backbone = chroma.ChromaLayout(prefix="", width=s["width"], head_dim=s["head_dim"], depth=s["depth"],
                                   depth_single=s["single"], in_channels=3 * PATCH * PATCH // 4,
                                   context_dim=s["context"], approximator_hidden=s["hidden"],
                                   approximator_layers=s["layers"])
    transformer = built(lambda: ChromaTransformer2DModel(**chroma.model_config(backbone)), device, dtype, 0)
    head = built(lambda: NerfHead(NerfLayout(s["nerf"], s["nerf_depth"], s["ratio"], s["freqs"], True), 3, s["width"]),
                 device, dtype, 1)
    head.nerf_image_embedder.to(torch.float32)
    return chroma_radiance.radiance_model(transformer, head, PATCH, True, device)


def main() -> None:
    from comfymesh.diffusion.families import chroma_radiance

    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="tiny widths and depths (a CPU smoke test)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    s, size = (SMALL, 64) if args.small else (RELEASED, args.size)
    model = build(s, device, dtype)
    call = chroma_radiance.radiance_fn(model)
    gen = torch.Generator(device).manual_seed(2)
    x = torch.randn(2, 3, size, size, generator=gen, device=device, dtype=dtype)
    ctx = torch.randn(2, 128, s["context"], generator=gen, device=device, dtype=dtype)
    t = torch.full((2,), 0.7, device=device)
    hidden = torch.randn(2, (size // PATCH) ** 2, s["width"], generator=gen, device=device, dtype=dtype)
    with torch.no_grad():
        call_ms, _ = timed(lambda: call(x, t, ctx, None), device, args.runs)
        head_ms, _ = timed(lambda: model.head(x, hidden, PATCH), device, args.runs)
    result: dict[str, Any] = {
        "device": device_name(device), "size": size, "call_ms": call_ms, "head_ms": head_ms, "model_gib": gib(model)}
    if device.type == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    report(result, args.out)


if __name__ == "__main__":
    main()
