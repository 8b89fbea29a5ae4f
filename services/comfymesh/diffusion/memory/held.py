"""Memory the cache no longer lists but a running job still uses: models evicted while a job held them stay
allocated until it lets go, so the room a new model has is the budget less the cache's entries and these."""

from __future__ import annotations

import gc
import weakref
from typing import Any

from torch import nn


def modules_of(value: Any) -> list[nn.Module]:
    """The weight-holding modules of a cache value: a module, or a loaded checkpoint's parts."""
    if isinstance(value, nn.Module):
        return [value]
    parts = getattr(value, "parts", None)
    if parts is None:
        return []
    return [m for m in (parts.unet, parts.vae, *parts.clips.values()) if isinstance(m, nn.Module)]


def _bytes(module: nn.Module, host_only: bool = False) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers())
               if not host_only or t.device.type == "cpu")


class HeldMemory:
    """Weak references to the modules of evicted entries, with their sizes (all, and those in host memory)."""

    def __init__(self) -> None:
        self._refs: list[tuple[weakref.ref[nn.Module], int, int]] = []

    def evicted(self, value: Any) -> None:
        self._refs.extend((weakref.ref(m), _bytes(m), _bytes(m, host_only=True)) for m in modules_of(value))

    def _alive(self) -> list[tuple[weakref.ref[nn.Module], int, int]]:
        """The refs of modules still alive (collected first, so only real holders count)."""
        if self._refs:
            gc.collect()
            self._refs = [entry for entry in self._refs if entry[0]() is not None]
        return self._refs

    def bytes(self) -> int:
        """Bytes of evicted modules still alive, wherever they are."""
        return sum(n for _, n, _ in self._alive())

    def host_bytes(self) -> int:
        """The part of bytes() in host memory (a streamed model's blocks, text encoders moved off the device)."""
        return sum(n for _, _, n in self._alive())
