"""USO style projectors (ModelPatchLoader's uso-flux1-projector files in models/model_patches, applied by
USOStyleReference to FLUX.1): recognised by keys and shapes, kept as a small module, computed as ComfyUI 0.8.0
computes them.

The file holds, under `feature_embedder.`, three levels (`high`, `mid`, `low`), each an
`<level>_embedding_linear.0` Linear(SigLIP tokens → style tokens), a `<level>_layer_norm` LayerNorm(SigLIP
width) and a `<level>_projection` Linear(SigLIP width → the model's hidden width). A level takes one SigLIP
hidden state [B, T, D]: the token axis goes through the first Linear and SiLU (transposed in and back), then
the LayerNorm and the projection give [B, style tokens, hidden]. `low` reads the tower's layer −20, `mid`
layer −11, `high` the penultimate; the tokens are high ‖ mid ‖ low. The full-size file is 729 SigLIP tokens
(so400m at 384 px), 64 style tokens per level, width 1152, hidden 3072; every size is read from the shapes, so
tiny test files load too. ComfyUI runs the projector in the file's dtype (manual_cast: the input is cast to
the weights' dtype) and casts its output to the model's text dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.models.tensor_source import TensorSource

PREFIX = "feature_embedder."
MARKER = PREFIX + "mid_layer_norm.bias"  # the key ComfyUI's ModelPatchLoader tells a USO projector by
LEVELS = ("high", "mid", "low")  # the order of the output tokens
EPS = 1e-5  # ComfyUI's LayerNorm default


@dataclass(frozen=True)
class UsoLayout:
    siglip_tokens: int
    style_tokens: int  # per level: the model sees 3× as many
    siglip_width: int
    hidden: int

    def describe(self) -> str:
        return (f"USO style projector ({self.siglip_tokens} SigLIP tokens of width {self.siglip_width} → "
                f"3×{self.style_tokens} tokens of width {self.hidden})")


def is_uso_projector(src: TensorSource) -> bool:
    return src.has(MARKER)


def parse_uso(src: TensorSource) -> UsoLayout | None:
    """The layout of a USO projector file, None if it is not one; ModelError if its levels disagree."""
    if not is_uso_projector(src):
        return None
    shapes = {}
    for level in LEVELS:
        style, tokens = src.shape(f"{PREFIX}{level}_embedding_linear.0.weight")
        hidden, width = src.shape(f"{PREFIX}{level}_projection.weight")
        norm = src.shape(f"{PREFIX}{level}_layer_norm.weight")[0]
        if norm != width:
            raise ModelError(f"{src.path.name}: USO level {level} normalises width {norm} but projects {width}")
        shapes[level] = UsoLayout(int(tokens), int(style), int(width), int(hidden))
    if len(set(shapes.values())) != 1:
        raise ModelError(f"{src.path.name}: the USO projector's levels differ in shape ({shapes})")
    return shapes["high"]


class UsoProjector(nn.Module):
    """The projector's weights in the file's layout (without `feature_embedder.`) and dtype."""

    def __init__(self, layout: UsoLayout) -> None:
        super().__init__()
        self.layout = layout
        for level in LEVELS:
            setattr(self, f"{level}_embedding_linear", nn.Sequential(nn.Linear(layout.siglip_tokens,
                                                                               layout.style_tokens), nn.SiLU()))
            setattr(self, f"{level}_layer_norm", nn.LayerNorm(layout.siglip_width, eps=EPS))
            setattr(self, f"{level}_projection", nn.Linear(layout.siglip_width, layout.hidden))

    def level(self, name: str, hidden: torch.Tensor) -> torch.Tensor:
        """One level on one hidden state [B, T, D] (already in the weights' dtype) → [B, style tokens, hidden]."""
        linear: nn.Linear = getattr(self, f"{name}_embedding_linear")[0]
        norm: nn.LayerNorm = getattr(self, f"{name}_layer_norm")
        projection: nn.Linear = getattr(self, f"{name}_projection")
        x = F.silu(F.linear(hidden.transpose(1, 2), linear.weight, linear.bias)).transpose(1, 2)
        x = F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, EPS)
        return F.linear(x, projection.weight, projection.bias)

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        """Hidden states [3, B, T, D] (layers −20, −11, penultimate) → style tokens [B, 3·S, hidden]
        (high ‖ mid ‖ low), in the weights' dtype."""
        if stacked.shape[0] != 3 or stacked.shape[2] != self.layout.siglip_tokens:
            raise ModelError(f"the {self.layout.describe()} takes 3 SigLIP hidden states of "
                             f"{self.layout.siglip_tokens} tokens, got {tuple(stacked.shape)}")
        weight = next(self.parameters())
        x = stacked.to(weight.device, weight.dtype)
        by_level = {"low": x[0], "mid": x[1], "high": x[2]}
        return torch.cat([self.level(name, by_level[name]) for name in LEVELS], dim=1)


def style_tokens(projector: UsoProjector, stacked: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """ComfyUI's UsoStyleProjectorPatch: the hidden states cast to the model's text dtype, projected in the
    file's dtype, the tokens cast back to the text dtype."""
    device = next(projector.parameters()).device
    with torch.no_grad():
        out: torch.Tensor = projector(stacked.to(device, dtype))
    return out.to(dtype)


def stack_hidden_states(style: torch.Tensor, penultimate: torch.Tensor) -> torch.Tensor:
    """USOStyleReference's input: a SigLIP output's layers −20 and −11 (`style_hidden_states` [B, 2, T, D],
    models.clip_vision) and its penultimate layer [B, T, D] → [3, B, T, D], in the order low, mid, high."""
    return torch.stack([style[:, 0], style[:, 1], penultimate])


def load_uso_projector(path: Path, device: torch.device) -> UsoProjector:
    """A USO projector file as the module on `device` in the file's dtype; ModelError if it is not one."""
    src = TensorSource(path)
    layout = parse_uso(src)
    if layout is None:
        raise ModelError(f"{path.name} is no USO style projector (no {MARKER})")
    state = {k.removeprefix(PREFIX): src.get(k) for k in src.keys if k.startswith(PREFIX)}
    dtype = state["high_projection.weight"].dtype
    with torch.device("meta"):
        net = UsoProjector(layout)
    result = net.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ModelError(f"{path.name}: the {layout.describe()} weights do not fit its layout (missing "
                         f"{result.missing_keys[:4]}, unexpected {result.unexpected_keys[:4]})")
    return net.to(device, dtype if dtype.is_floating_point else torch.float32).eval().requires_grad_(False)
