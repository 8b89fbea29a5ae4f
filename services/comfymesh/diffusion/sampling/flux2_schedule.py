"""FLUX.2's σ schedule (ComfyUI's Flux2Scheduler): the flow times 1 → 0 in `steps` equal steps, each shifted by
an exponential time shift μ fitted to the image's token count and the step count.

σ_i = e^μ / (e^μ + (1/t_i − 1)), t_i = 1 − i/steps (float32, so σ_0 = 1 and σ_steps = 0), with
μ = a₂·L + b₂ for L > 4300 tokens, else the line through (10 steps, a₁·L + b₁) and (200 steps, a₂·L + b₂) at
`steps`; L = round(width·height / 16²), a₁ = 8.73809524e-05, b₁ = 1.89833333, a₂ = 0.00016927, b₂ = 0.45666666.
"""

from __future__ import annotations

import torch

from comfymesh.diffusion.sampling.flux_sampling import flux_time_shift

A1, B1 = 8.73809524e-05, 1.89833333
A2, B2 = 0.00016927, 0.45666666
LONG_SEQUENCE = 4300


def empirical_mu(tokens: int, steps: int) -> float:
    """The shift μ for an image of `tokens` latent tokens sampled in `steps` steps."""
    if tokens > LONG_SEQUENCE:
        return A2 * tokens + B2
    m_200 = A2 * tokens + B2
    m_10 = A1 * tokens + B1
    slope = (m_200 - m_10) / 190.0
    return slope * steps + (m_200 - 200.0 * slope)


def flux2_sigmas(steps: int, width: int, height: int) -> torch.Tensor:
    """σ schedule [steps + 1] (float32, CPU) for an image of width × height pixels."""
    tokens = round(width * height / (16 * 16))  # Python's round, as ComfyUI (half to even)
    t = torch.linspace(1, 0, steps + 1)
    return flux_time_shift(empirical_mu(tokens, steps), t)
