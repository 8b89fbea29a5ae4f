"""Issue 16's memory measurements on a GPU, in pure torch (no model files): block-wise offload against the resident
model, and the fp8 matmul mode against the bf16 upcast, on FLUX-sized layers.

Run (repository root, CUDA machine): `PYTHONPATH=libs:services python bench/offload_gpu.py --out offload.json`

  offload  a stack of FLUX-width transformer-style blocks (3072 wide: fused qkv, projection, 4× MLP; 226 MB each in
           bf16) run resident, then with the last blocks streamed from pinned host memory by
           comfymesh.diffusion.memory.streaming (the plan from memory.offload_plan under a budget): whether the
           output is bit-identical, time per model call, the time a call of the copies alone takes, and the share
           of the streamed call not covered by compute ((streamed − resident) / streamed).
  fp8      one Fp8Linear per FLUX linear shape on 4096 tokens: upcast bf16 vs torch._scaled_mm time and PSNR.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "libs"), str(REPO / "services")]

from comfymesh.diffusion.memory import offload_plan  # noqa: E402  (after the path)
from comfymesh.diffusion.memory.streaming import offload  # noqa: E402
from comfymesh.diffusion.models.fp8_weights import Fp8Linear, set_fp8_kernel  # noqa: E402

WIDTH = 3072


class Block(nn.Module):
    """A pre-norm attention-free transformer block of FLUX's linear shapes (the weights are what streams)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(WIDTH, elementwise_affine=False)
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH)
        self.proj = nn.Linear(3 * WIDTH, WIDTH)
        self.up = nn.Linear(WIDTH, 4 * WIDTH)
        self.down = nn.Linear(4 * WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        x = x + self.proj(torch.nn.functional.gelu(self.qkv(h)))
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))


class Stack(nn.Module):
    def __init__(self, depth: int) -> None:
        super().__init__()
        self.inp = nn.Linear(64, WIDTH)
        self.blocks = nn.ModuleList(Block() for _ in range(depth))
        self.out = nn.Linear(WIDTH, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = block(h)
        out: torch.Tensor = self.out(h)
        return out


def timed(fn: Any, runs: int, *args: Any) -> tuple[float, Any]:
    """(median seconds of `runs` calls after a warm-up, the last result)."""
    out = fn(*args)
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        out = fn(*args)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def offload_case(depth: int, streamed: int, tokens: int, runs: int) -> dict[str, Any]:
    cuda = torch.device("cuda")
    torch.manual_seed(0)
    host = Stack(depth).to(torch.bfloat16).eval().requires_grad_(False)
    x = torch.randn(1, tokens, 64, device=cuda, dtype=torch.bfloat16)
    resident = copy.deepcopy(host).to(cuda)
    with torch.inference_mode():
        t_res, ref = timed(resident, runs, x)
    del resident
    torch.cuda.empty_cache()
    blocks, other = offload_plan.module_blocks(host)
    sizes = list(blocks.values())
    budget = other + sum(sorted(sizes)[-2:]) + sum(sizes[: depth - streamed])
    plan = offload_plan.plan("stack", blocks, other, budget)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    streamer = offload(host, plan, cuda)
    assert streamer is not None
    with torch.inference_mode():
        t_str, got = timed(host, runs, x)
    peak = torch.cuda.max_memory_allocated() - base
    pinned = [t for name in plan.streamed for t in host.get_submodule(name).parameters()]
    t_copy, _ = timed(lambda: [t.to(cuda, non_blocking=True) for t in pinned], runs)
    return {"blocks": depth, "streamed": len(plan.streamed), "tokens": tokens, "plan": plan.describe(),
            "bit_identical": bool(torch.equal(ref, got)), "resident_ms": round(t_res * 1000, 2),
            "streamed_ms": round(t_str * 1000, 2), "copies_alone_ms": round(t_copy * 1000, 2),
            "copy_GB_s": round(plan.streamed_bytes / t_copy / 1e9, 1),
            "uncovered_share": round(max(0.0, (t_str - t_res) / t_str), 3),
            "peak_GiB_beyond_inputs": round(peak / 2**30, 2), "plan_device_GiB": round(plan.device_bytes / 2**30, 2)}


def fp8_case(tokens: int, runs: int) -> list[dict[str, Any]]:
    cuda = torch.device("cuda")
    out = []
    for n_out, n_in in ((3 * WIDTH, WIDTH), (WIDTH, WIDTH), (4 * WIDTH, WIDTH), (WIDTH, 4 * WIDTH)):
        torch.manual_seed(0)
        real = torch.randn(n_out, n_in, device=cuda) * 0.02
        scale = real.abs().max() / 448
        layer = Fp8Linear((real / scale).to(torch.float8_e4m3fn), torch.full((n_out,), float(scale), device=cuda),
                          torch.randn(n_out, device=cuda, dtype=torch.bfloat16) * 0.01)
        x = torch.randn(tokens, n_in, device=cuda, dtype=torch.bfloat16)
        with torch.inference_mode():
            t_up, ref = timed(layer, runs, x)
            set_fp8_kernel(layer, "scaled_mm")
            t_mm, got = timed(layer, runs, x)
        ref, got = ref.float(), got.float()
        mse = float((got - ref).pow(2).mean())
        span = float(ref.max() - ref.min())
        out.append({"shape": [n_out, n_in], "tokens": tokens, "upcast_ms": round(t_up * 1000, 3),
                    "scaled_mm_ms": round(t_mm * 1000, 3), "psnr_db": round(10 * math.log10(span**2 / mse), 2)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=24)
    parser.add_argument("--streamed", type=int, default=20, help="blocks the budget leaves to stream")
    parser.add_argument("--tokens", default="1024,4608", help="comma-separated token counts (4608: 1024² + text)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    res: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    res["offload"] = [offload_case(args.depth, args.streamed, int(t), args.runs) for t in args.tokens.split(",")]
    res["fp8"] = fp8_case(4096, args.runs)
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
