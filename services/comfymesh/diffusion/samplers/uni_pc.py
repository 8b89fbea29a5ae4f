"""uni_pc / uni_pc_bh2: UniPC multistep predictor-corrector (Zhao et al. 2023), data-prediction form."""

from __future__ import annotations

import torch

from comfymesh.diffusion.samplers.base import Denoiser, Sampler, SamplerEnv


def make_uni_pc(variant: str) -> Sampler:
    def sample(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, env: SamplerEnv) -> torch.Tensor:
        raise NotImplementedError(variant)

    return sample
