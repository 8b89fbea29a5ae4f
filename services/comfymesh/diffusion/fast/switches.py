"""The fast path's switches (environment).

COMFYMESH_FAST_PATH (auto | 1 | 0; auto = on for CUDA devices), COMFYMESH_COMPILE (1 | 0; 0 = CUDA graphs
of the eager UNet only), COMFYMESH_COMPILE_BACKEND (default inductor), COMFYMESH_COMPILE_MODE (default
"default"), COMFYMESH_CUDA_GRAPHS (1 | 0), COMFYMESH_WARMUP_MANIFEST (a JSON file of buckets to build at
stage start, see `manifest.warmup_from_manifest`), COMFYMESH_COMPILE_IDLE_S / COMFYMESH_COMPILE_MAX_DEFER_S
(compile in a quiet moment, see `builder._wait_until_idle`).
"""

from __future__ import annotations

import torch

from comfymesh.config import env_flag

FAST_ENV = "COMFYMESH_FAST_PATH"
COMPILE_ENV = "COMFYMESH_COMPILE"
BACKEND_ENV = "COMFYMESH_COMPILE_BACKEND"
MODE_ENV = "COMFYMESH_COMPILE_MODE"
GRAPHS_ENV = "COMFYMESH_CUDA_GRAPHS"
MANIFEST_ENV = "COMFYMESH_WARMUP_MANIFEST"
IDLE_ENV = "COMFYMESH_COMPILE_IDLE_S"
MAX_DEFER_ENV = "COMFYMESH_COMPILE_MAX_DEFER_S"


def fast_enabled(device: torch.device) -> bool:
    """Whether the fast path is on for `device` ($COMFYMESH_FAST_PATH; auto = CUDA only)."""
    return env_flag(FAST_ENV, device.type == "cuda")


def compile_enabled(device: torch.device) -> bool:
    """Whether the fast path compiles on `device` ($COMFYMESH_COMPILE; default on for CUDA devices)."""
    return fast_enabled(device) and env_flag(COMPILE_ENV, device.type == "cuda")
