"""FLUX.1 USO's cost on a GPU: the USO projector (3 levels, 729 SigLIP tokens → 3 × 64 style tokens of width
3072) and one FLUX.1-dev model call with those 192 tokens before the text, against the same call without them.
Random weights at the released sizes (bf16; the FLUX transformer built from its config, ~24 GB), one 1024×1024
latent (4096 image tokens), 512 T5 tokens. Both calls run FluxCall's eager path (a call with style tokens never
takes the fast path, like Kontext references), so the difference is the 192 extra text tokens and the hook.

Run: `.venv/bin/python bench/uso_gpu.py` (CUDA), or `--tiny --device cpu` to check it runs. Prints one JSON object:
projector ms, plain and styled call ms (median of --runs after a warm-up), the ratio, peak GPU memory."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "services"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "libs"))


def timed(fn: Any, device: torch.device, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    from comfymesh.diffusion.families import flux
    from comfymesh.diffusion.models.uso_projector import UsoLayout, UsoProjector, style_tokens

    parser = argparse.ArgumentParser(prog="bench/uso_gpu.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="reduced sizes (a CPU check that it runs)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16
    tiny = args.tiny
    width, heads = (256, 2) if tiny else (3072, 24)
    layout = flux.FluxLayout(prefix="", width=width, heads=heads, head_dim=128, depth=1 if tiny else 19,
                             depth_single=1 if tiny else 38, in_channels=16, out_channels=16, vec_dim=768,
                             context_dim=64 if tiny else 4096, guidance=True, mlp=4 * width)
    torch.manual_seed(0)
    with torch.device(device):
        model = flux._new_model(layout).to(dtype).eval().requires_grad_(False)
        projector = UsoProjector(UsoLayout(729, 4 if tiny else 64, 32 if tiny else 1152, width))
        projector = projector.to(dtype).eval().requires_grad_(False)
    call = flux.FluxCall(model, layout)
    side = 16 if tiny else 128  # latent cells: 1024 px / 8
    x = torch.randn(1, 16, side, side, device=device, dtype=dtype)
    ctx = torch.randn(1, 16 if tiny else 512, layout.context_dim, device=device, dtype=dtype)
    y = flux.flux_y(torch.randn(1, 768), 3.5, 768).to(device)
    t = torch.tensor([0.7], device=device)
    hidden = torch.randn(3, 1, 729, projector.layout.siglip_width, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad():
        projector_ms = timed(lambda: style_tokens(projector, hidden, dtype), device, args.runs)
        style = style_tokens(projector, hidden, dtype)
        plain_ms = timed(lambda: call(x, t, ctx, y), device, args.runs)
        styled_ms = timed(lambda: call(x, t, ctx, y, style=style), device, args.runs)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "tiny": tiny,
              "style_tokens": int(style.shape[1]), "text_tokens": int(ctx.shape[1]),
              "image_tokens": (side // 2) ** 2, "projector_ms": round(projector_ms, 3),
              "plain_call_ms": round(plain_ms, 2), "styled_call_ms": round(styled_ms, 2),
              "styled_over_plain": round(styled_ms / plain_ms, 3),
              "peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
