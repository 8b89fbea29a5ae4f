"""The fp8 matmul mode: fp8 weights multiplied in fp8 by torch._scaled_mm instead of upcast to bf16 per layer.

Opt-in (COMFYMESH_FP8_MATMUL) and only where the GPU has fp8 tensor cores (compute capability 8.9 or more, as
ComfyUI's supports_fp8_compute): elsewhere the choice is logged once and the upcast path runs. Numerics follow
ComfyUI's fp8 linear: the input is clamped to e4m3's range and cast at scale 1, the weight keeps its file scale,
e4m3 weights only (e5m2 weights upcast).
"""

from __future__ import annotations

import logging
from typing import Literal

import torch

log = logging.getLogger(__name__)

Fp8Kernel = Literal["upcast", "scaled_mm"]
MIN_CAPABILITY = (8, 9)
E4M3_MAX = 448.0
_ALIGN = 16  # _scaled_mm needs both matrix dimensions of the weight in multiples of 16
_warned: set[str] = set()


def device_capability(device: torch.device) -> tuple[int, int] | None:
    """The CUDA compute capability of `device`, None off CUDA."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return major, minor


def fp8_kernel(enabled: bool, device: torch.device, capability: tuple[int, int] | None) -> Fp8Kernel:
    """How fp8 linears compute on `device`: `scaled_mm` when the mode is on and the device has fp8 tensor cores,
    else `upcast` (the reason logged once per device when the mode was asked for)."""
    if not enabled:
        return "upcast"
    if device.type == "cuda" and capability is not None and capability >= MIN_CAPABILITY:
        return "scaled_mm"
    reason = f"{device} has compute capability {capability}" if capability else f"{device} is not a CUDA device"
    if str(device) not in _warned:
        _warned.add(str(device))
        log.warning("fp8 matmul mode asked for, but %s (needs %d.%d or more): fp8 weights are upcast to the "
                    "compute dtype instead", reason, *MIN_CAPABILITY)
    return "upcast"


def takes_scaled_mm(weight: torch.Tensor) -> bool:
    """Whether a weight [out, in] can go through _scaled_mm: e4m3 and 16-aligned on both dimensions."""
    return weight.dtype == torch.float8_e4m3fn and weight.shape[0] % _ALIGN == 0 and weight.shape[1] % _ALIGN == 0


def tensor_scale(rows: torch.Tensor) -> torch.Tensor | None:
    """A weight's per-tensor scale (0-dim float32) when every row has the same one, else None (row-wise)."""
    flat = rows.reshape(-1).float()
    return flat[0].clone() if bool((flat == flat[0]).all()) else None


def scaled_mm_linear(x: torch.Tensor, weight: torch.Tensor, rows: torch.Tensor, scale: torch.Tensor | None,
                     bias: torch.Tensor | None) -> torch.Tensor:
    """x [..., in] @ (weight [out, in] fp8 · scale).T + bias, in x's dtype, by one fp8 matmul: x clamped to ±448
    and cast to e4m3 (scale 1); the weight's per-tensor `scale`, or its `rows` scales [out] row-wise."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    out_dtype = x.dtype
    if scale is not None:
        one = torch.ones((), device=x.device, dtype=torch.float32)
        b = None if bias is None else bias.to(out_dtype)
        out = torch._scaled_mm(x2, weight.t(), scale_a=one, scale_b=scale, bias=b, out_dtype=out_dtype)
    else:
        ones = torch.ones((x2.shape[0], 1), device=x.device, dtype=torch.float32)
        out = torch._scaled_mm(x2, weight.t(), scale_a=ones, scale_b=rows.reshape(1, -1).float(), out_dtype=out_dtype)
        if bias is not None:
            out = out + bias.to(out_dtype)
    return out.reshape(*shape[:-1], weight.shape[0])
