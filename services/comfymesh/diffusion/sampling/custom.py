"""ComfyUI's custom sampling: the SAMPLER, NOISE and GUIDER values, the SIGMAS arithmetic, dual-CFG guidance.

Values are storable, since the orchestrator stores every non-image output for its cache
(`comfymesh.artifacts.codec`):
- SAMPLER: `{"kind": "sampler", "name": <sampler name>}`
- NOISE: `{"kind": "noise", "seed": int, "disabled": bool}`; a disabled noise still carries the seed the
  samplers' own per-step noise is drawn from (0 for DisableNoise, as in ComfyUI)
- SIGMAS: a 1-D float32 tensor (numpy once read back from the store)
- GUIDER: `{"kind": "guider", "type": "cfg" | "basic" | "dual", "model": MODEL handle, "cfg": float,
  "conds": {role: CONDITIONING}}`, with `"cfg2"` and `"style"` for "dual"; roles are positive and
  negative, and middle for "dual"
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from comfymesh.contracts.errors import NodeInputError
from comfymesh.contracts.handles import ModelHandle
from comfymesh.diffusion.sampling.guidance import CondEntry, GuidedDenoiser, UNetFn
from comfymesh.diffusion.sampling.model_sampling import ModelSampling
from comfymesh.diffusion.sampling.schedulers import calculate_sigmas

Value = dict[str, Any]
GUIDER_TYPES = ("cfg", "basic", "dual")


def sampler_value(name: str) -> Value:
    return {"kind": "sampler", "name": name}


def noise_value(seed: int, disabled: bool = False) -> Value:
    return {"kind": "noise", "seed": int(seed), "disabled": disabled}


def guider_value(guider_type: str, model: ModelHandle, conds: dict[str, Any], cfg: float, **params: Any) -> Value:
    return {"kind": "guider", "type": guider_type, "model": model, "cfg": float(cfg), **params, "conds": conds}


def expect_value(value: Any, kind: str) -> Value:
    """`value` if it is a `kind` value (a dict made by the node that outputs `kind`), else a clear refusal."""
    if not isinstance(value, dict) or value.get("kind") != kind:
        raise NodeInputError(f"expected a {kind.upper()} input, got {type(value).__name__}")
    if kind == "guider" and value.get("type") not in GUIDER_TYPES:
        raise NodeInputError(f"unknown guider type {value.get('type')!r}: expected one of {', '.join(GUIDER_TYPES)}")
    return value


def as_sigmas(value: Any) -> torch.Tensor:
    """A SIGMAS value (tensor, stored numpy array or list) as a fresh 1-D CPU float32 tensor."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float32).reshape(-1).clone()
    return torch.tensor(np.asarray(value, dtype=np.float32).reshape(-1))


# --- schedules ------------------------------------------------------------------------------------------


def basic_sigmas(ms: ModelSampling, scheduler: str, steps: int, denoise: float) -> torch.Tensor:
    """BasicScheduler: the last steps + 1 sigmas of the schedule for ⌊steps / denoise⌋ steps (none at
    denoise 0). Unlike KSampler it keeps every sampler's schedule as is."""
    total = steps
    if denoise < 1.0:
        if denoise <= 0.0:
            return torch.zeros(0)
        total = int(steps / denoise)
    return calculate_sigmas(ms, scheduler, total)[-(steps + 1):]


def sd_turbo_sigmas(ms: ModelSampling, steps: int, denoise: float) -> torch.Tensor:
    """SDTurboScheduler: σ at timesteps 999, 899, …, 99, starting 10·(1 − denoise) entries in, then 0."""
    start = 10 - int(10 * denoise)
    timesteps = torch.arange(999, 0, -100)[start:start + steps]
    return torch.cat([ms.sigma(timesteps), torch.zeros(1)])


# --- operations on sigmas -------------------------------------------------------------------------------


def split_sigmas(sigmas: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SplitSigmas: the first step + 1 sigmas and the rest from index `step` (σ_step is in both)."""
    return sigmas[:step + 1], sigmas[step:]


def split_sigmas_denoise(sigmas: torch.Tensor, denoise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SplitSigmasDenoise: the last round(steps · denoise) steps are the low part, the others the high.

    Python's `round` (half to even) picks the count; with a count of 0 the high part is empty, as in
    ComfyUI (whose slice `[:-0]` is empty), and the low part is the last sigma alone."""
    low_steps = round(max(len(sigmas) - 1, 0) * denoise)
    high = sigmas[:len(sigmas) - low_steps] if low_steps else sigmas[:0]
    return high, sigmas[-(low_steps + 1):]


def flip_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """FlipSigmas: reversed; a leading 0 becomes 1e-4 (a zero σ cannot be sampled from)."""
    if len(sigmas) == 0:
        return sigmas
    flipped = sigmas.flip(0)
    if flipped[0] == 0:
        flipped[0] = 0.0001
    return flipped


def set_first_sigma(sigmas: torch.Tensor, sigma: float) -> torch.Tensor:
    """SetFirstSigma: a copy with σ_0 replaced."""
    if len(sigmas) == 0:
        raise NodeInputError("SetFirstSigma needs at least one sigma; the input SIGMAS is empty")
    out = sigmas.clone()
    out[0] = sigma
    return out


# --- guidance -------------------------------------------------------------------------------------------


class DualCFGDenoiser(GuidedDenoiser):
    """DualCFGGuider: cond1 (positive) guided away from cond2 (middle) by cfg, cond2 away from the negative
    by cfg2, on x0 predictions p, m, n:

    - regular: D = n + (m − n)·cfg2 + (p − m)·cfg; with cfg2 = 1 the negative is not evaluated (n = 0), and
      with cfg = 1 as well neither is cond2 (m = 0), as in ComfyUI (the result is the same formula);
    - nested:  D = n + cfg2·(m + (p − m)·cfg − n), every prediction evaluated.
    """

    def __init__(self, unet: UNetFn, sampling: ModelSampling, prediction: str, positive: list[CondEntry],
                 middle: list[CondEntry], negative: list[CondEntry], cfg: float, cfg2: float, nested: bool,
                 dtype: torch.dtype, before_eval: Callable[[], None] | None = None) -> None:
        super().__init__(unet, sampling, prediction, positive, negative, cfg, dtype, before_eval)
        self.middle = middle
        self.cfg2 = cfg2
        self.nested = nested

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.before_eval is not None:
            self.before_eval()
        skip_negative = not self.nested and not self.keep_uncond and math.isclose(self.cfg2, 1.0)
        skip_middle = skip_negative and math.isclose(self.cfg, 1.0)
        groups = [[] if skip_negative else self.negative, [] if skip_middle else self.middle, self.positive]
        n, m, p = self._predict(x, sigma, groups)
        if self.nested:
            if self.keep_uncond:  # ComfyUI's inner cfg_function has cond2 as its unconditional side
                self.last_uncond = m
            return n + self.cfg2 * (m + (p - m) * self.cfg - n)
        if self.keep_uncond:
            self.last_uncond = n
        return n + (m - n) * self.cfg2 + (p - m) * self.cfg
