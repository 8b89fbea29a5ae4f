"""The discrete sigma table shared by SD1.x, SD2.x and SDXL, and the σ ↔ timestep maps on it."""

from __future__ import annotations

import math

import torch

NUM_TIMESTEPS = 1000
ZTSNR_LAST_ALPHA_BAR = 4.8973451890853435e-08


class ModelSampling:
    """σ_i for i = 0…999 (float32) with log σ computed in float64 before rounding, as ComfyUI does."""

    def __init__(self, zero_terminal_snr: bool = False) -> None:
        i = torch.arange(NUM_TIMESTEPS, dtype=torch.float64)
        start, end = math.sqrt(0.00085), math.sqrt(0.012)
        betas = (start + (end - start) * i / (NUM_TIMESTEPS - 1)) ** 2
        alpha_bar = torch.cumprod(1.0 - betas, dim=0)
        if zero_terminal_snr:
            alpha_bar = _rescale_zero_terminal_snr(alpha_bar)
        sigmas = ((1 - alpha_bar) / alpha_bar) ** 0.5
        self.sigmas = sigmas.to(torch.float32)
        self.log_sigmas = sigmas.log().to(torch.float32)

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The nearest table index of each σ (as float, the way the UNet receives it); no host sync."""
        log_sigma = sigma.log()
        table = self.log_sigmas.to(sigma.device)
        dists = log_sigma.reshape(-1, 1) - table.reshape(1, -1)
        return dists.abs().argmin(dim=1).reshape(sigma.shape).to(torch.float32)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """σ at a real timestep: log-linear interpolation in the table."""
        t = torch.clamp(t.float(), 0, NUM_TIMESTEPS - 1)
        low = t.floor().long()
        high = t.ceil().long()
        w = t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]
        return log_sigma.exp()

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor((1.0 - percent) * 999.0)))


def _rescale_zero_terminal_snr(alpha_bar: torch.Tensor) -> torch.Tensor:
    # shift and scale √ᾱ so the last entry is 0 and the first keeps its value (Lin et al. 2023)
    root = alpha_bar.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    out = root**2
    out[-1] = ZTSNR_LAST_ALPHA_BAR  # a zero would make σ infinite
    return out
