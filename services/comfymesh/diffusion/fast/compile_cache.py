"""Compiled artifacts persisted under $COMFYMESH_HOME/cache/torch-compile.

Inductor's on-disk caches (TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR) plus torch's "mega-cache" bundle,
saved after every build and loaded once per process before its first compilation, so a restarted stage
rebuilds a bucket from cache (seconds) instead of from scratch (minutes).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import torch

from comfymesh.config.process_env import default_library_variable

log = logging.getLogger(__name__)

MEGA_CACHE_FILE = "mega_cache.bin"

_cache_state: dict[str, Any] = {"dir": None, "loaded": False}
_cache_lock = threading.Lock()


def compile_cache_dir(home: Path | None = None) -> Path | None:
    """Point inductor's caches at <home>/cache/torch-compile (once; cheap, so stage start-up may call it).
    Without `home`: the folder pointed at before, if any (the stage points it at start-up)."""
    with _cache_lock:
        if _cache_state["dir"] is not None:
            return Path(_cache_state["dir"])
        if home is None:
            return None
        root = Path(home) / "cache" / "torch-compile"
        root.mkdir(parents=True, exist_ok=True)
        default_library_variable("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor"))
        default_library_variable("TRITON_CACHE_DIR", str(root / "triton"))
        _cache_state["dir"] = str(root)
        return root


def load_compile_cache() -> None:
    """Load the saved mega-cache bundle once, right before the first compilation (it imports inductor,
    which takes seconds: never on the start-up path)."""
    root = compile_cache_dir()
    with _cache_lock:
        if root is None or _cache_state["loaded"]:
            return
        _cache_state["loaded"] = True
        mega = root / MEGA_CACHE_FILE
        loader = getattr(torch.compiler, "load_cache_artifacts", None)
        if not mega.is_file() or loader is None:
            return
        try:
            loader(mega.read_bytes())
            log.info("loaded compile cache %s (%d bytes)", mega, mega.stat().st_size)
        except Exception as exc:  # a stale or foreign bundle must never stop serving
            log.warning("ignoring compile cache %s: %s", mega, exc)


def save_compile_cache() -> Path | None:
    """Write torch's mega-cache bundle next to the inductor cache (atomic replace)."""
    root = _cache_state["dir"]
    saver = getattr(torch.compiler, "save_cache_artifacts", None)
    if root is None or saver is None:
        return None
    try:
        result = saver()
    except Exception as exc:
        log.warning("could not save the compile cache: %s", exc)
        return None
    if not result:
        return None
    data = result[0]
    path = Path(root) / MEGA_CACHE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path
