"""Lazy, memory-mapped reading of one .safetensors file, with errors a user can act on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from comfymesh.contracts.errors import ModelError

T = TypeVar("T")


class TensorSource:
    """Lazy, memory-mapped access to the tensors of one .safetensors file, with classified errors."""

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        self.path = path
        try:
            self._file = safe_open(str(path), framework="pt", device="cpu")
            self.keys: list[str] = list(self._file.keys())
            self._shapes = {k: tuple(self._file.get_slice(k).get_shape()) for k in self.keys}
        except Exception as exc:
            raise ModelError(
                f"{path.name} is not a readable .safetensors file (corrupt or truncated?): {exc}",
                details=str(path),
            ) from exc
        # a truncated file still has a valid header: check the data really covers every tensor
        self._check_length()

    def _check_length(self) -> None:
        import json
        import struct

        with self.path.open("rb") as fh:
            header_len = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(header_len))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        size = self.path.stat().st_size
        if 8 + header_len + end > size:
            raise ModelError(
                f"{self.path.name} is truncated: its header describes {8 + header_len + end} bytes "
                f"but the file has {size}",
                details=str(self.path),
            )

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def has(self, key: str) -> bool:
        return key in self._shapes

    def get(self, key: str) -> torch.Tensor:
        try:
            return self._file.get_tensor(key)
        except Exception as exc:
            raise ModelError(f"{self.path.name}: cannot read tensor {key}: {exc}") from exc

    def with_prefix(self, prefix: str) -> dict[str, torch.Tensor]:
        return {k: self.get(k) for k in self.keys if k.startswith(prefix)}


def converted(src: TensorSource, what: str, build: Callable[[], T]) -> T:
    """`build()`'s result (a model made from `src`); any failure but a ModelError is reported as one naming the
    file and what it was becoming (`what`: "T5 text encoder", "FLUX diffusion model", ...)."""
    try:
        return build()
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{src.path.name}: {what} could not be converted: {exc}") from exc
