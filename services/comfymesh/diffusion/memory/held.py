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


def _bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


class HeldMemory:
    """Weak references to the modules of evicted entries, with their sizes."""

    def __init__(self) -> None:
        self._refs: list[tuple[weakref.ref[nn.Module], int]] = []

    def evicted(self, value: Any) -> None:
        self._refs.extend((weakref.ref(m), _bytes(m)) for m in modules_of(value))

    def bytes(self) -> int:
        """Bytes of evicted modules still alive (collected first, so only real holders count)."""
        if not self._refs:
            return 0
        gc.collect()
        self._refs = [(ref, n) for ref, n in self._refs if ref() is not None]
        return sum(n for _, n in self._refs)
