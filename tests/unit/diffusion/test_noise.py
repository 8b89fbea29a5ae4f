"""Initial noise as ComfyUI draws it (§4.5)."""

from __future__ import annotations

import pytest
import torch

from comfymesh.diffusion.sampling.noise import initial_noise


def test_seed_zero_reference_values() -> None:
    z = initial_noise(torch.zeros([1, 4, 8, 8]), 0)
    assert z.flatten()[:4].tolist() == pytest.approx([-1.12584, -1.15236, -0.25058, -0.43388], abs=1e-5)
    batch = initial_noise(torch.zeros([3, 4, 8, 8]), 0)
    assert torch.equal(batch[0], z[0])


def test_batch_index_replays_single_draws() -> None:
    latent = torch.zeros([2, 4, 9, 7])
    z = initial_noise(latent, 3, batch_index=[2, 0])
    gen = torch.Generator().manual_seed(3)
    draws = [torch.randn([1, 4, 9, 7], generator=gen) for _ in range(3)]
    assert torch.equal(z[0], draws[2][0]) and torch.equal(z[1], draws[0][0])


def test_large_seed_accepted() -> None:
    z = initial_noise(torch.zeros([1, 4, 2, 2]), 2**64 - 1)
    assert z.shape == (1, 4, 2, 2)
