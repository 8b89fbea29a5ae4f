"""One fixed FLUX transformer call on the CPU (seeded inputs for the tiny layout's 16 latent channels and 64-wide
context), for tests that compare a model placed differently (streamed, split) against the resident one."""

from __future__ import annotations

from collections.abc import Callable

import torch

from comfymesh.diffusion.families import flux

CPU = torch.device("cpu")


def flux_call(model: torch.nn.Module) -> Callable[[torch.nn.Module], torch.Tensor]:
    """A call of `model`'s layout with inputs drawn once (seed 0), to run on that model or a placed copy."""
    rec = flux.recognition(flux.layout_of(model))
    torch.manual_seed(0)
    x, ctx, y = torch.randn(1, 16, 8, 8), torch.randn(1, 5, 64), torch.randn(1, 33)

    def call(m: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            out: torch.Tensor = flux.FAMILY.sampling_model(m, rec, CPU).unet(x, torch.tensor([0.7]), ctx, y)
        return out

    return call
