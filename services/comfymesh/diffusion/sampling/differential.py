"""DifferentialDiffusion: the noise mask thresholded at each evaluation by how far the schedule has gone.

With t(σ) the model's timestep, σ_from the schedule's first σ and σ_to the larger of its last σ and the
model's σ_min, an evaluation at σ uses

    threshold = (t(σ) − t(σ_to)) / (t(σ_from) − t(σ_to))      (float32, as ComfyUI computes it)
    m_σ = [mask ≥ threshold]

so a pixel with mask value v joins the regenerated region once the schedule passes v. A strength s in
(0, 1) blends: s·m_σ + (1 − s)·mask (0 and 1 give the binary mask)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from comfymesh.diffusion.sampling.model_sampling import ModelSampling

MaskFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def differential_mask_fn(sampling: ModelSampling, sigmas: torch.Tensor, strength: float) -> MaskFn:
    """The per-evaluation mask (mask, σ) → mask for a call sampling on `sigmas` (CPU, n + 1 values)."""
    sigma_to = torch.maximum(sampling.sigma_min, sigmas[-1].float())
    t_from = sampling.timestep(sigmas[0].float().reshape(1))[0]
    t_to = sampling.timestep(sigma_to.reshape(1))[0]

    def mask_at(mask: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        current = sampling.timestep(sigma.detach().float().reshape(-1)[:1].cpu())[0]
        threshold = (current - t_to) / (t_from - t_to)
        binary = (mask >= threshold.to(mask.device)).to(mask.dtype)
        if strength and strength < 1:
            return strength * binary + (1 - strength) * mask
        return binary

    return mask_at
