"""Noise exactly as ComfyUI draws it: initial noise, per-step ("default") noise and Brownian-tree noise."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

SEED_MOD = 2**64


def initial_noise(latent: torch.Tensor, seed: int, batch_index: Sequence[int] | None = None) -> torch.Tensor:
    """Standard normals shaped like `latent`, from the CPU generator reseeded with `seed`.

    With a batch_index, draws [1, …] tensors one after another up to max(index) and row r takes draw
    batch_index[r] (a single [B, …] draw is not the same stream for every latent size).
    """
    # ComfyUI reseeds the global CPU RNG; a private generator seeded alike gives the same stream and is
    # safe when several samplers run in one process
    gen = torch.Generator(device="cpu").manual_seed(seed % SEED_MOD)
    shape = latent.shape
    if batch_index is None:
        return torch.randn(shape, dtype=torch.float32, layout=latent.layout, generator=gen, device="cpu")
    wanted = set(batch_index)
    draws: dict[int, torch.Tensor] = {}
    for i in range(max(batch_index) + 1):
        z = torch.randn([1, *shape[1:]], dtype=torch.float32, layout=latent.layout, generator=gen, device="cpu")
        if i in wanted:
            draws[i] = z
    return torch.cat([draws[i] for i in batch_index], dim=0)


class DefaultNoise:
    """The ancestral samplers' per-step noise: a generator on x's device, seeded seed+1 on the CPU and
    seed on a GPU (so CPU and GPU runs differ, as in ComfyUI)."""

    def __init__(self, x: torch.Tensor, seed: int) -> None:
        self.gen = torch.Generator(device=x.device)
        self.gen.manual_seed((seed + 1 if x.device.type == "cpu" else seed) % SEED_MOD)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.size(), dtype=x.dtype, layout=x.layout, device=x.device, generator=self.gen)


class BrownianNoise:
    """SDE noise: one torchsde BrownianTree over [smallest non-zero σ, largest σ] for the whole batch,
    built on the CPU (or on x's device for the `_gpu` samplers), entropy = seed."""

    def __init__(self, x: torch.Tensor, sigmas: torch.Tensor, seed: int, on_device: bool = False) -> None:
        import torchsde

        positive = sigmas[sigmas > 0]
        t0, t1 = float(positive.min()), float(sigmas.max())
        self.device = x.device if on_device else torch.device("cpu")
        w0 = torch.zeros_like(x, device=self.device)
        self.tree = torchsde.BrownianTree(torch.tensor(t0, device=self.device), w0,
                                          torch.tensor(t1, device=self.device), entropy=seed % SEED_MOD)

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        a = sigma.to(self.device)
        b = sigma_next.to(self.device)
        lo, hi, sign = (a, b, 1.0) if a < b else (b, a, -1.0)
        with warnings.catch_warnings():
            # torchsde compares the float32 query with its float64 end point and warns at σ_max itself
            warnings.filterwarnings("ignore", message="Should have t")
            w = self.tree(lo, hi)
        z = w * sign / (hi - lo).abs().sqrt()
        return z.to(device=like.device, dtype=like.dtype)
