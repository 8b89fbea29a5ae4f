"""ipndm and ipndm_v: improved pseudo-numerical (Adams–Bashforth) steps on d = (x − D)/σ in σ, up to order 4
(Zhang & Chen 2022; zju-pi's diff-solvers, Apache-2.0, as ComfyUI runs them). A step to σ = 0 returns D.

ipndm uses the fixed-step coefficients (3, −1)/2, (23, −16, 5)/12, (55, −59, 37, −9)/24; ipndm_v the
variable-step ones from the past step sizes h_n = σ_{i+1} − σ_i, h_{n−1} = σ_i − σ_{i−1}, ….
"""

from __future__ import annotations

import torch

from comfymesh.diffusion.sampling.samplers.base import Denoiser, Sampler, SamplerEnv, to_d

MAX_ORDER = 4
# integer weights of d_i, d_{i−1}, … and their divisor: summed first, then divided, for ComfyUI's rounding
FIXED = {2: ((3, -1), 2), 3: ((23, -16, 5), 12), 4: ((55, -59, 37, -9), 24)}


def _fixed(order: int, ds: list[torch.Tensor]) -> torch.Tensor:
    weights, divisor = FIXED[order]
    total = sum((w * d for w, d in zip(weights, reversed(ds), strict=True)), torch.zeros_like(ds[-1]))
    return total / divisor


def _variable_coeffs(order: int, s: torch.Tensor, i: int) -> list[torch.Tensor]:
    """ipndm_v's weights of d_i, d_{i−1}, … for step i of schedule s."""
    h0 = s[i + 1] - s[i]
    if order == 2:
        h1 = s[i] - s[i - 1]
        return [(2 + h0 / h1) / 2, -(h0 / h1) / 2]
    h1, h2 = s[i] - s[i - 1], s[i - 1] - s[i - 2]
    temp1 = (1 - h0 / (3 * (h0 + h1)) * (h0 * (h0 + h1)) / (h1 * (h1 + h2))) / 2
    if order == 3:
        return [(2 + h0 / h1) / 2 + temp1, -(h0 / h1) / 2 - (1 + h1 / h2) * temp1, temp1 * h1 / h2]
    h3 = s[i - 2] - s[i - 3]
    ratio = h1 * (h1 + h2) / (h2 * (h2 + h3))
    temp2 = ((1 - h0 / (3 * (h0 + h1))) / 2 + (1 - h0 / (2 * (h0 + h1))) * h0 / (6 * (h0 + h1 + h2))) \
        * (h0 * (h0 + h1) * (h0 + h1 + h2)) / (h1 * (h1 + h2) * (h1 + h2 + h3))
    return [(2 + h0 / h1) / 2 + temp1 + temp2,
            -(h0 / h1) / 2 - (1 + h1 / h2) * temp1 - (1 + h1 / h2 + ratio) * temp2,
            temp1 * h1 / h2 + (h1 / h2 + ratio * (1 + h2 / h3)) * temp2,
            -temp2 * ratio * h1 / h2]


def make_ipndm(variable: bool) -> Sampler:
    def sample(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, env: SamplerEnv) -> torch.Tensor:
        values = sigmas.tolist()
        ds: list[torch.Tensor] = []  # the last MAX_ORDER derivatives, oldest first
        for i in range(len(sigmas) - 1):
            denoised = model(x, sigmas[i])
            env.step(i, denoised, x)
            d = to_d(x, sigmas[i], denoised)
            ds = [*ds, d][-MAX_ORDER:]
            order = min(MAX_ORDER, i + 1)
            dt = sigmas[i + 1] - sigmas[i]
            if values[i + 1] == 0:
                x = denoised
            elif order == 1:
                x = x + dt * d
            elif not variable:
                x = x + dt * _fixed(order, ds)
            else:
                coeffs = _variable_coeffs(order, sigmas, i)
                x = x + dt * sum((c * v for c, v in zip(coeffs, reversed(ds), strict=True)), torch.zeros_like(d))
        return x

    return sample
