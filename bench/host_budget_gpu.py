"""Issue 16's host-memory budget on a GPU: the host peak the model cache predicts for a streamed model before it loads
(memory.host: the host build, then the pinned blocks) against the peak resident set the load really reached, and
the pinned bytes it counts after against what the streamer holds; then a host budget below the prediction refused
before any weight is read.

Run (repository root, CUDA machine): `PYTHONPATH=libs:services python bench/host_budget_gpu.py --out host.json`
(`--device cpu --width 256` runs it small on any machine). The file is a random-weight FLUX.1 transformer in bf16
written to --dir; the device budget lets it keep a quarter of its blocks resident.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "libs"), str(REPO / "services")]

from safetensors.torch import save_file  # noqa: E402

from comfymesh.contracts.errors import ModelTooLargeError  # noqa: E402
from comfymesh.diffusion.families.loading import compute_dtype  # noqa: E402
from comfymesh.diffusion.memory import offload_plan  # noqa: E402
from comfymesh.diffusion.memory.fit import resident_bytes, tensor_bytes  # noqa: E402
from comfymesh.diffusion.memory.streaming import streamer_of  # noqa: E402
from comfymesh.diffusion.models.cache import ModelCache  # noqa: E402
from comfymesh.diffusion.models.convert import Placement, import_model_code  # noqa: E402
from comfymesh.diffusion.models.tiny_flux import flux_shapes, random_tensors  # noqa: E402


def peak_rss() -> int:
    """The process's peak resident set so far, bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--width", type=int, default=3072)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--depth-single", type=int, default=12)
    args = ap.parse_args()
    device = torch.device(args.device)
    root = args.dir or Path(tempfile.mkdtemp())
    path = root / "flux_host_budget.safetensors"
    shapes = flux_shapes(width=args.width, head_dim=128, depth=args.depth, depth_single=args.depth_single,
                         context=4096, vec=768)
    save_file(random_tensors(shapes, 0, torch.bfloat16), str(path))

    place = Placement.for_device(device)
    blocks, other = offload_plan.file_blocks(tensor_bytes([path], place.unet_dtype))
    budget = other + sum(sorted(blocks.values(), reverse=True)[:2]) + sum(blocks.values()) // 4
    predicted = resident_bytes([path], compute_dtype(device))  # the host build's bytes (memory.host)
    refused = ModelCache(budget_bytes=budget, device=device, host_budget_bytes=predicted // 2)
    try:
        refused.unet_file(path)
        refusal = "loaded (not refused)"
    except ModelTooLargeError as exc:
        refusal = str(exc)

    import_model_code()  # model code imported before the measure (the refused load read no weights)
    before = peak_rss()  # the file's pages mapped while it loads count in the resident set too
    cache = ModelCache(budget_bytes=budget, device=device, host_budget_bytes=predicted * 2)
    start = time.perf_counter()
    loaded = cache.unet_file(path)
    load_s = time.perf_counter() - start
    streamer = streamer_of(loaded.unet()[0])
    held = sum(t.numel() * t.element_size() for b in (streamer.blocks if streamer else [])
               for t in (*b.parameters(), *b.buffers()))
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "file_bytes": path.stat().st_size, "device_budget": budget,
        "predicted_host_peak": predicted, "peak_rss_before": before, "peak_rss_after": peak_rss(),
        "peak_rss_growth": peak_rss() - before,
        "counted_host_bytes": cache.host_used_bytes(), "streamer_host_bytes": held,
        "streamed_blocks": len(streamer.blocks) if streamer else 0, "load_s": round(load_s, 2),
        "refusal_at_half_the_prediction": refusal,
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
