"""What the model-call benches share (diffsynth_gpu, controlnets_gpu, radiance_gpu): modules built in place on
the device with seeded random weights (no files, no hub), a median timer that waits for the GPU, and the JSON
result printed and written."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch


def random_(module: torch.nn.Module, seed: int) -> None:
    """Seeded weights of a trained model's scale: norms' weights near 1, biases near 0, matrices 1/√fan-in."""
    gen = torch.Generator(next(module.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1:
                p.copy_(1.0 + 0.01 * torch.randn(p.shape, generator=gen, device=p.device) if name.endswith("weight")
                        else 0.01 * torch.randn(p.shape, generator=gen, device=p.device))
            else:
                p.copy_(torch.randn(p.shape, generator=gen, device=p.device) / p.shape[-1] ** 0.5)


def built(factory: Any, device: torch.device, dtype: torch.dtype, seed: int) -> Any:
    """`factory()`'s module built in place on `device` in `dtype` (8 B parameters in float32 would not fit), with
    random_ weights, in eval mode without gradients."""
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            module = factory()
    finally:
        torch.set_default_dtype(torch.float32)
    random_(module, seed)
    return module.eval().requires_grad_(False)


def gib(module: torch.nn.Module) -> float:
    """The module's weights in GiB."""
    return sum(p.numel() * p.element_size() for p in module.parameters()) / 2**30


def timed(fn: Any, device: torch.device, runs: int) -> tuple[float, Any]:
    """The median of `runs` calls of `fn` in ms after one warm-up, and its last output."""
    out = fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return sorted(times)[len(times) // 2], out


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def report(result: dict[str, Any], out: Path | None) -> None:
    """Print the result as JSON and write it to `out` when given."""
    print(json.dumps(result, indent=1))
    if out:
        out.write_text(json.dumps(result, indent=1) + "\n")
