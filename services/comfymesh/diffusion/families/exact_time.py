"""The timestep and guidance embeddings of diffusers' FLUX-style transformers, fed float32 values as ComfyUI does.

diffusers' FLUX, Chroma and FLUX.2 forwards round the timestep (and guidance) to the model's dtype before they
project it: in bf16, σ = 0.7 becomes 0.69921875, and ×1000 that is a phase error of 0.8 rad in the fastest
sinusoid. ComfyUI projects the float32 value and rounds only the embedding. On a GPU this rounding alone took one
bf16 FLUX call to 26 dB against float32 (60 dB once fed exactly).

`ExactTimeProjection` wraps an embedder's `time_proj` (it has no weights, so state-dict keys do not change); a
family's call hands it the float32 values for its next projections with `feed`, and each projection takes the
next one in order. The projection falls back to its (rounded) argument when nothing was fed or shapes differ.
This traces as one graph under torch.compile (the list lives on the module) and replays under CUDA graphs.
"""

from __future__ import annotations

import torch


class ExactTimeProjection(torch.nn.Module):
    def __init__(self, proj: torch.nn.Module) -> None:
        super().__init__()
        self.proj = proj
        self.pending: list[torch.Tensor] = []

    def forward(self, rounded: torch.Tensor) -> torch.Tensor:
        if self.pending and self.pending[0].shape == rounded.shape:
            exact = self.pending.pop(0)
            return self.proj(exact.to(rounded.device))  # type: ignore[no-any-return]
        return self.proj(rounded)  # type: ignore[no-any-return]


def exact_time_projection(embedder: torch.nn.Module) -> ExactTimeProjection:
    """`embedder.time_proj`, wrapped on first use (idempotent)."""
    proj = embedder.get_submodule("time_proj")
    if not isinstance(proj, ExactTimeProjection):
        proj = ExactTimeProjection(proj)
        embedder.time_proj = proj
    return proj


def feed(embedder: torch.nn.Module, *values: torch.Tensor | None) -> None:
    """The float32 values the embedder's next projections take, in the order the forward projects them
    (FLUX: timestep then guidance); None entries are skipped. Replaces anything left from an earlier call."""
    exact_time_projection(embedder).pending = [v.float() for v in values if v is not None]
