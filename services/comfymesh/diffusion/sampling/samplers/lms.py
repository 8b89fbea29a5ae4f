"""lms: linear multistep of order 4, coefficients integrated numerically over σ (scipy quad)."""

from __future__ import annotations

import torch

from comfymesh.diffusion.sampling.samplers.base import Denoiser, SamplerEnv, to_d

ORDER = 4


def multistep_coeff(order: int, t: list[float], i: int, j: int) -> float:
    """∫_{t_i}^{t_{i+1}} of the Lagrange basis polynomial for point i−j over points i…i−order+1."""

    def basis(tau: float) -> float:
        prod = 1.0
        for k in range(order):
            if k != j:
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    from scipy import integrate  # here, not at module level: scipy adds ~1 s to every stage start

    return float(integrate.quad(basis, t[i], t[i + 1], epsrel=1e-4)[0])


def sample_lms(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, env: SamplerEnv) -> torch.Tensor:
    values = sigmas.double().tolist()  # float32 sigmas promoted to float64
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        ds.append(to_d(x, sigmas[i], denoised))
        if len(ds) > ORDER:
            ds.pop(0)
        env.step(i, denoised, x)
        if values[i + 1] == 0:
            x = denoised
        else:
            order = min(i + 1, ORDER)
            coeffs = [multistep_coeff(order, values, i, j) for j in range(order)]
            x = x + sum(c * d for c, d in zip(coeffs, reversed(ds), strict=False))
    return x
