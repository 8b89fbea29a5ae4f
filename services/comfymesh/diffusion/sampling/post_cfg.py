"""Post-CFG functions (ComfyUI's sampler_post_cfg_function), recorded on a MODEL handle under `post_cfg`
as `[name, parameter]` pairs, applied in order to each guided prediction.

CFGNorm (comfy_extras.nodes_cfg): with c the positive's x0 prediction and d the guided one (both
[B, C, h, w]), d · clamp(‖c‖ / (‖d‖ + 1e-8), 0, 1) · strength, the norms taken over channels per pixel."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

PostCfg = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(positive x0 prediction, guided prediction) → the guided prediction to use."""


def cfg_norm(cond: torch.Tensor, denoised: torch.Tensor, strength: float) -> torch.Tensor:
    scale = (torch.norm(cond, dim=1, keepdim=True) / (torch.norm(denoised, dim=1, keepdim=True) + 1e-8)).clamp(0.0, 1.0)
    return denoised * scale * strength


FUNCTIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {"cfg_norm": cfg_norm}


def post_cfg_functions(records: Sequence[Sequence[Any]]) -> tuple[PostCfg, ...]:
    """The functions a handle's `post_cfg` records name, in the order the patches were applied."""
    return tuple(_bound(FUNCTIONS[name], float(value)) for name, value in records)


def _bound(fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor], value: float) -> PostCfg:
    return lambda cond, denoised: fn(cond, denoised, value)


def apply_post_cfg(functions: Sequence[PostCfg], cond: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    for fn in functions:
        denoised = fn(cond, denoised)
    return denoised
