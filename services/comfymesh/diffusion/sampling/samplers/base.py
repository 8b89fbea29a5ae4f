"""What every sampler receives: the guided denoiser, the start x, the schedule and a small environment.

Shapes: x and D(x, σ) are [B, C, h, w] on the compute device; `sigmas` is a CPU float32 tensor of n+1
values. Branches look at CPU sigma values only, so a sampler loop never waits on the device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

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

    def step(self, i: int, denoised: torch.Tensor, x: torch.Tensor) -> None:
        if self.callback is not None:
            self.callback(i, denoised, x)

    def default_noise(self, x: torch.Tensor) -> StepNoise:
        return DefaultNoise(x, self.seed)

    def brownian(self, x: torch.Tensor, sigmas: torch.Tensor, on_device: bool = False) -> SdeNoise:
        return BrownianNoise(x, sigmas, self.seed, on_device=on_device)


Sampler = Callable[[Denoiser, torch.Tensor, torch.Tensor, SamplerEnv], torch.Tensor]


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The ODE derivative dx/dσ = (x − D)/σ."""
    return (x - denoised) / sigma


def ancestral_split(sigma_from: torch.Tensor, sigma_to: torch.Tensor,
                    eta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(σ_down, σ_up) of an ancestral step; square roots as powers of 0.5, as ComfyUI computes them."""
    if not eta:
        return sigma_to, torch.zeros_like(sigma_to)
    up = torch.minimum(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    down = (sigma_to**2 - up**2) ** 0.5
    return down, up


def t_of(sigma: torch.Tensor) -> torch.Tensor:
    """DPM-Solver time t = −ln σ."""
    return sigma.log().neg()


def sigma_of(t: torch.Tensor) -> torch.Tensor:
    return t.neg().exp()
