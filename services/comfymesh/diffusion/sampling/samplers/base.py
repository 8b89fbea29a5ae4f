"""What every sampler receives: the guided denoiser, the start x, the schedule and a small environment.

Shapes: x and D(x, σ) are [B, C, h, w] on the compute device; `sigmas` is a CPU float32 tensor of n+1
values. Branches look at CPU sigma values only, so a sampler loop never waits on the device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from comfymesh.contracts.errors import NodeInputError
from comfymesh.diffusion.sampling.model_sampling import ModelSampling
from comfymesh.diffusion.sampling.noise import BrownianNoise, DefaultNoise

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""D(x, σ): x [B, C, h, w], σ a 0-d float32 tensor → the denoised estimate, same shape as x."""

StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]
"""(step index i, D_i of the step's first evaluation, x before the step)."""

StepNoise = Callable[[torch.Tensor], torch.Tensor]
"""A per-step noise source: one standard-normal draw shaped like x."""

SdeNoise = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""Brownian noise for a step (σ, σ_next, like) → unit-variance draw shaped like `like`."""


@dataclass
class SamplerEnv:
    seed: int
    callback: StepCallback | None = None
    eta: float = 1.0
    s_noise: float = 1.0
    flow: bool = False  # a flow (CONST) model: half-log-SNR is log((1 − σ)/σ), α = 1 − σ
    model_sampling: ModelSampling | None = None  # the model's σ table (percent_to_sigma); None: SD's

    def percent_to_sigma(self, percent: float) -> float:
        return (self.model_sampling or ModelSampling()).percent_to_sigma(percent)

    def step(self, i: int, denoised: torch.Tensor, x: torch.Tensor) -> None:
        if self.callback is not None:
            self.callback(i, denoised, x)

    def default_noise(self, x: torch.Tensor) -> StepNoise:
        return DefaultNoise(x, self.seed)

    def brownian(self, x: torch.Tensor, sigmas: torch.Tensor, on_device: bool = False) -> SdeNoise:
        return BrownianNoise(x, sigmas, self.seed, on_device=on_device)


Sampler = Callable[[Denoiser, torch.Tensor, torch.Tensor, SamplerEnv], torch.Tensor]


class UncondSource(Protocol):
    """A guided denoiser that keeps each evaluation's unconditional x0 prediction (see GuidedDenoiser)."""

    keep_uncond: bool
    last_uncond: torch.Tensor | None


def uncond_source(model: Denoiser, sampler: str) -> UncondSource:
    """The guided denoiser under `model` (through inpainting wrappers) whose unconditional prediction a CFG++
    sampler reads after each evaluation; the runner turns `keep_uncond` on before sampling."""
    inner: object = model
    while not hasattr(inner, "last_uncond"):
        inner = getattr(inner, "inner", None)
        if inner is None:
            raise NodeInputError(f"sampler {sampler!r} needs a CFG guider's unconditional prediction; this guider "
                                 "has none")
    if not getattr(inner, "keep_uncond", False):
        raise NodeInputError(f"sampler {sampler!r} needs the unconditional prediction kept (keep_uncond)")
    return inner  # type: ignore[return-value]


def last_uncond(source: UncondSource) -> torch.Tensor:
    if source.last_uncond is None:
        raise RuntimeError("the guided denoiser kept no unconditional prediction")
    return source.last_uncond


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The ODE derivative dx/dσ = (x − D)/σ."""
    return (x - denoised) / sigma


def ancestral_split(sigma_from: torch.Tensor, sigma_to: torch.Tensor,
                    eta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(σ_down, σ_up) of an ancestral step; square roots as powers of 0.5, as ComfyUI computes them.

    σ_up is Python's min(σ_to, …) as in ComfyUI: a NaN candidate (σ_from = ∞, euler_ancestral_cfg_pp's
    first step on a flow model) gives σ_to, not NaN."""
    if not eta:
        return sigma_to, torch.zeros_like(sigma_to)
    candidate = eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    up = torch.where(candidate < sigma_to, candidate, sigma_to)
    down = (sigma_to**2 - up**2) ** 0.5
    return down, up


def t_of(sigma: torch.Tensor) -> torch.Tensor:
    """DPM-Solver time t = −ln σ."""
    return sigma.log().neg()


def sigma_of(t: torch.Tensor) -> torch.Tensor:
    return t.neg().exp()


def half_log_snr(sigma: torch.Tensor, flow: bool) -> torch.Tensor:
    """λ = log(α/σ): −ln σ, or log((1 − σ)/σ) on a flow model."""
    return sigma.logit().neg() if flow else sigma.log().neg()


def sigma_of_half_log_snr(lam: torch.Tensor, flow: bool) -> torch.Tensor:
    return lam.neg().sigmoid() if flow else lam.neg().exp()


def offset_first_sigma(sigmas: torch.Tensor, env: SamplerEnv) -> torch.Tensor:
    """On a flow model a first σ of 1 (λ = −∞) moves to σ at 0.01 % of the schedule, as ComfyUI does."""
    if len(sigmas) <= 1 or not env.flow or float(sigmas[0]) < 1:
        return sigmas
    out = sigmas.clone()
    out[0] = env.percent_to_sigma(1e-4)
    return out
