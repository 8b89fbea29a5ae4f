"""Whether a model fits the memory budget, decided before any weight is read: its resident bytes estimated from
the file headers, and a clear error when it cannot fit (non-retryable when the model alone exceeds the budget,
retryable when other jobs hold the memory it needs)."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from pathlib import Path

import torch

from comfymesh.contracts.errors import ModelTooLargeError, ResourceExhaustedError
from comfymesh.diffusion.models.fp8_weights import bookkeeping

# safetensors dtype names → bytes per element; fp8 matrices stay fp8 in memory (models.fp8_weights)
_FP8 = {"F8_E4M3", "F8_E5M2"}
_FLOATS = {"F64", "F32", "F16", "BF16", *_FP8}
_INT_BYTES = {"I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_ROW_SCALE_BYTES = 4  # an Fp8Linear's float32 scale per output row
# text encoders' token embedding tables (T5's `shared`, the LLMs' `embed_tokens`, CLIP's `token_embedding`)
_TOKEN_TABLES = ("embed_tokens.weight", "shared.weight", "token_embedding.weight")
GiB = 2**30
# an estimate from the file counts keys that never load (a checkpoint's sampling tables, unused towers): a model is
# refused only when it exceeds the budget by more than this share
ESTIMATE_SLACK = 0.01


def _header(path: Path) -> dict[str, dict[str, object]]:
    with path.open("rb") as fh:
        length = struct.unpack("<Q", fh.read(8))[0]
        header: dict[str, dict[str, object]] = json.loads(fh.read(length))
    header.pop("__metadata__", None)
    return header


def tensor_bytes(paths: Iterable[Path], compute_dtype: torch.dtype,
                 storage: torch.dtype | None = None) -> dict[str, int]:
    """Key → bytes each tensor of the files takes once loaded: an fp8 matrix as fp8 with a float32 scale per row
    (an Fp8Linear), other floats (fp8 norms and vectors too, upcast at load) in `compute_dtype`, integer tensors
    as stored; the quantisation bookkeeping keys (scales, markers, descriptors: held in the row scales) left out.
    An fp8 `storage` (UNETLoader's weight_dtype on a family's model: fp8_weights.hold_in) holds every float
    matrix as an fp8 one."""
    size = torch.empty((), dtype=compute_dtype).element_size()
    out: dict[str, int] = {}
    for path in paths:
        header = _header(Path(path))
        for key, info in header.items():
            if bookkeeping(key, header):
                continue
            dtype = str(info["dtype"])
            shape = info["shape"]
            assert isinstance(shape, list)
            numel = 1
            for dim in shape:
                numel *= int(dim)
            # an fp8 token table is upcast at load (it is no linear), so it counts in the compute dtype
            if len(shape) == 2 and not key.endswith(_TOKEN_TABLES) and (
                    dtype in _FP8 or (storage is not None and dtype in _FLOATS)):
                out[key] = numel + int(shape[0]) * _ROW_SCALE_BYTES
            else:
                out[key] = numel * (size if dtype in _FLOATS else _INT_BYTES.get(dtype, size))
    return out


def resident_bytes(paths: Iterable[Path], compute_dtype: torch.dtype) -> int:
    """Bytes the files' tensors take once loaded (tensor_bytes summed)."""
    return sum(tensor_bytes(paths, compute_dtype).values())


def gib(n: int) -> str:
    """Bytes as a reader wants them: GiB, MiB for less than a GiB."""
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / 2**20:.1f} MiB"


def check_fit(name: str, needed: int, budget: int, held: int, minimum: int | None = None,
              slack: float = ESTIMATE_SLACK) -> None:
    """Refuse a model before loading it: ModelTooLargeError (non-retryable) when it cannot fit the budget even
    alone — `minimum` is its smallest footprint (streamed, if it can stream), else `needed` — and
    ResourceExhaustedError (retryable) when it could, but `held` bytes of other jobs' models leave too little.
    `slack`: the share an estimate from the file may exceed the budget by (0 for exact bytes)."""
    smallest = needed if minimum is None else minimum
    if smallest > budget * (1 + slack):
        how = "" if minimum is None or minimum == needed else f" (at least {gib(minimum)} with its blocks streamed)"
        raise ModelTooLargeError(f"{name} needs {gib(needed)} of memory{how} but the model budget is "
                                 f"{gib(budget)}: it cannot run on this replica")
    if smallest + held > budget * (1 + slack):
        raise ResourceExhaustedError(f"{name} needs {gib(smallest)} of memory but other jobs hold {gib(held)} of the "
                                     f"{gib(budget)} budget: try again when they finish")
