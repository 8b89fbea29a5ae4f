"""How a family turns its diffusion-model file into a built diffusers module: the weights under the file's
prefix, converted and loaded with fp8 linears kept fp8, errors naming the file, and UNETLoader's fp8 rounding.
Each family module keeps only what is its own (layout, converter, model class, fix-ups after loading).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.models.fp8_weights import (
    Converter,
    converted_row_scales,
    held_by_fp8_linear,
    hold_in,
    install_fp8_linears,
    split_scales,
)
from comfymesh.diffusion.models.tensor_source import TensorSource, converted

PREFIXES = ("", "model.diffusion_model.")  # a bare diffusion-model file (UNETLoader's), or a checkpoint's


def model_prefix(src: TensorSource, markers: Iterable[str]) -> str | None:
    """Where a family's diffusion model is in the file: the first of PREFIXES under which every marker key is;
    None when the file holds no such model."""
    keys = tuple(markers)
    return next((p for p in PREFIXES if all(src.has(p + k) for k in keys)), None)


_HOST_BUILD: ContextVar[torch.dtype | None] = ContextVar("host_build_dtype", default=None)
# UNETLoader's fp8 weight_dtype while its model builds: linears go to fp8 as they load (load_fp8_aware)
_STORAGE: ContextVar[torch.dtype | None] = ContextVar("fp8_storage", default=None)


@contextmanager
def host_build(dtype: torch.dtype) -> Iterator[None]:
    """Build on the host (device cpu) in `dtype`: a model that will stream its blocks to a GPU is built there in
    the GPU's compute dtype, not in float32 (a 32B FLUX.2 Dev needs 64 GB of host memory in bf16, 128 in float32)."""
    token = _HOST_BUILD.set(dtype)
    try:
        yield
    finally:
        _HOST_BUILD.reset(token)


def compute_dtype(device: torch.device) -> torch.dtype:
    """The dtype ComfyUI runs each family here in: bf16 on a GPU (fp16 overflows SD3.5 and Qwen-Image, HiDream
    takes bf16 or float32 only), float32 on the CPU (unless inside `host_build`)."""
    if device.type == "cuda":
        return torch.bfloat16
    return _HOST_BUILD.get() or torch.float32


def model_dtype(model: torch.nn.Module, device: torch.device) -> torch.dtype:
    """The dtype a built model computes in: its first parameter's, or `compute_dtype` where that one is an fp8
    weight (fp8 linears compute in the compute dtype)."""
    param = next(model.parameters())
    return param.dtype if param.dtype in (torch.float32, torch.float16, torch.bfloat16) else compute_dtype(device)


def count_blocks(keys: Iterable[str], prefix: str, group: str) -> int:
    """How many numbered blocks `prefix + group + ".N."` the keys name (`double_blocks`, `layers`, ...)."""
    rx = re.compile(re.escape(prefix + group) + r"\.(\d+)\.")
    return len({m.group(1) for k in keys if (m := rx.match(k))})


def file_state(src: TensorSource, prefix: str) -> dict[str, torch.Tensor]:
    """The file's tensors under `prefix` (a checkpoint's `model.diffusion_model.`, or ""), named without it."""
    return {k[len(prefix):]: v for k, v in src.with_prefix(prefix).items()}


def load_fp8_aware(src: TensorSource, prefix: str, make: Callable[[], Any], convert: Converter,
                   device: torch.device, dtype: torch.dtype, what: str) -> torch.nn.Module:
    """`make()`'s model (built on the meta device) holding the file's weights under `prefix`, renamed by
    `convert`, on `device`: fp8 linears (fp8 and scaled-fp8 files) stay fp8 and compute in `dtype` per layer, as
    ComfyUI runs them; the rest in `dtype`. ModelError naming the file when the weights do not fit the model."""
    weights, scales = split_scales(file_state(src, prefix), src.path.name)
    rows = converted_row_scales(convert, weights, scales)
    state = convert(weights)
    with torch.device("meta"):
        model: torch.nn.Module = make()
    rest = install_fp8_linears(model, state, rows, dtype, device, _STORAGE.get())
    result = model.load_state_dict(rest, strict=False, assign=True)
    missing = [k for k in result.missing_keys if not held_by_fp8_linear(model, k)]
    if missing or result.unexpected_keys:
        raise ModelError(f"{src.path.name}: the {what} weights do not fit the layout read from the file (missing "
                         f"{missing[:4]}, unexpected {result.unexpected_keys[:4]})")
    return model.eval().requires_grad_(False)


def load_diffusion_model(src: TensorSource, what: str, build: Callable[[], torch.nn.Module],
                         storage: torch.dtype | None = None) -> torch.nn.Module:
    """`build()`'s model, any failure but a ModelError reported as one naming the file; an fp8 `storage`
    (UNETLoader's weight_dtype) holds its linears in that format and rounds its other weights to it
    (fp8_weights.hold_in)."""
    token = _STORAGE.set(storage)  # the linears are held in `storage` as they load: no full-width copy first
    try:
        model = converted(src, f"{what} diffusion model", build)
    finally:
        _STORAGE.reset(token)
    if storage is not None:
        hold_in(model, storage)  # what the build made outside load_fp8_aware, and the other weights' rounding
    return model
