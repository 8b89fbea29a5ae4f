"""Sigma schedules by name, in ComfyUI's widget order, plus the KSampler adjustments of §4.4.

Each scheduler is `f(ms: ModelSampling, steps: int) -> Tensor[steps + 1]` (float32, ending in 0).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from comfymesh.diffusion.sampling.model_sampling import ModelSampling
from comfymesh.diffusion.sampling.schedulers import (
    beta,
    ddim_uniform,
    exponential,
    karras,
    kl_optimal,
    linear_quadratic,
    normal,
    sgm_uniform,
    simple,
)

Scheduler = Callable[[ModelSampling, int], torch.Tensor]

SCHEDULERS: dict[str, Scheduler] = {
    "simple": simple.schedule,
    "sgm_uniform": sgm_uniform.schedule,
    "karras": karras.schedule,
    "exponential": exponential.schedule,
    "ddim_uniform": ddim_uniform.schedule,
    "beta": beta.schedule,
    "normal": normal.schedule,
    "linear_quadratic": linear_quadratic.schedule,
    "kl_optimal": kl_optimal.schedule,
}
SCHEDULER_NAMES: tuple[str, ...] = tuple(SCHEDULERS)

# these samplers take one more step and drop the second-to-last sigma
DISCARD_PENULTIMATE = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"})


def calculate_sigmas(ms: ModelSampling, scheduler: str, steps: int) -> torch.Tensor:
    """The raw schedule; an unknown name falls back to the first one, as ComfyUI does."""
    fn = SCHEDULERS.get(scheduler, SCHEDULERS[SCHEDULER_NAMES[0]])
    return fn(ms, steps)


def sampler_sigmas(ms: ModelSampling, scheduler: str, steps: int, sampler: str) -> torch.Tensor:
    if sampler in DISCARD_PENULTIMATE:
        sigmas = calculate_sigmas(ms, scheduler, steps + 1)
        return torch.cat([sigmas[:-2], sigmas[-1:]])
    return calculate_sigmas(ms, scheduler, steps)


def ksampler_sigmas(ms: ModelSampling, scheduler: str, steps: int, sampler: str, denoise: float = 1.0,
                    start_step: int | None = None, last_step: int | None = None,
                    force_full_denoise: bool = False) -> torch.Tensor | None:
    """The schedule a KSampler node samples with; None means "return the input latent unchanged"."""
    if denoise > 0.9999:
        sigmas = sampler_sigmas(ms, scheduler, steps, sampler)
    elif denoise <= 0.0:
        return torch.zeros(0)
    else:
        total = int(steps / denoise)
        sigmas = sampler_sigmas(ms, scheduler, total, sampler)[-(steps + 1):]
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[: last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step < len(sigmas) - 1:
            sigmas = sigmas[start_step:]
        else:
            return None
    return sigmas
