"""Qwen-Image DiffSynth "blockwise ControlNet" patches (ModelPatchLoader's files in models/model_patches: canny,
depth, inpaint): recognised by keys and shapes, kept as a small module, computed as ComfyUI 0.8.0 computes them.

A patch embeds the VAE-encoded control image (16 latent channels moved into the model's latent space, 2×2
patches, then `img_in`; the inpaint patch takes a mask channel more) and, after each transformer block i, adds
`strength · block_i(image tokens, control tokens)` to the image tokens, where block_i is
output_proj(GELU(input_proj(RMS(x) + RMS(y)))). Weights stay in the file's dtype and are cast to the input's
dtype per call (ComfyUI's manual_cast): the control tokens are made in float32, the blocks run in the model's
dtype. ComfyUI builds every patch at 60 blocks of width 3072; the width, block count and extra input channels
are read from the shapes here, so tiny test files load too. Checked ad hoc against ComfyUI 0.8.0's own
QwenImageBlockWiseControlNet and DiffSynthCnetPatch on the tiny canny and inpaint files: control tokens and
patched hidden states bit-identical in float32 and bf16, the inpaint mask channel too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.latents.wan21 import WAN21
from comfymesh.diffusion.models.tensor_source import TensorSource

MARKER = "controlnet_blocks.0.y_rms.weight"
LATENT_IN = 64  # Qwen-Image's 16 latent channels × a 2×2 patch
LATENT_CHANNELS = 16
PATCH = 2
EPS = 1e-6
# the other patch kinds ModelPatchLoader takes, by the key ComfyUI tells them by
OTHER_KINDS = {
    "feature_embedder.mid_layer_norm.bias": "a USO style projector (USOStyleReference, FLUX)",
    "control_all_x_embedder.2-1.weight": "a Z-Image Fun ControlNet",
}


@dataclass(frozen=True)
class DiffSynthLayout:
    dim: int
    n_blocks: int
    additional_in_dim: int  # extra patched input channels: 4 (one mask channel × 2×2) for the inpaint patch

    def describe(self) -> str:
        kind = "inpaint" if self.additional_in_dim else "control"
        return f"Qwen-Image DiffSynth {kind} patch (width {self.dim}, {self.n_blocks} blocks)"


def parse_diffsynth(src: TensorSource) -> DiffSynthLayout | None:
    """The layout of a DiffSynth blockwise ControlNet file, None if it is not one."""
    if not (src.has(MARKER) and src.has("img_in.weight")):
        return None
    dim, patched = src.shape("img_in.weight")
    rx = re.compile(r"controlnet_blocks\.(\d+)\.")
    n_blocks = len({m.group(1) for k in src.keys if (m := rx.match(k))})
    if patched < LATENT_IN or (patched - LATENT_IN) % (PATCH * PATCH):
        raise ModelError(f"{src.path.name}: a DiffSynth patch whose image input is {patched} wide (needs 64, the "
                         "16 latent channels' 2×2 patches, plus whole mask channels)")
    return DiffSynthLayout(dim, n_blocks, patched - LATENT_IN)


def _linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    bias = None if layer.bias is None else layer.bias.to(x.dtype)
    return F.linear(x, layer.weight.to(x.dtype), bias)


def _rms(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), weight.to(x.dtype), EPS)


class ControlBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.x_rms = nn.RMSNorm(dim, eps=EPS)
        self.y_rms = nn.RMSNorm(dim, eps=EPS)
        self.input_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = _linear(_rms(x, self.x_rms.weight) + _rms(y, self.y_rms.weight), self.input_proj)
        out: torch.Tensor = _linear(F.gelu(h), self.output_proj)
        return out


class BlockwiseControlNet(nn.Module):
    """The patch's weights (`img_in`, `controlnet_blocks.N`) in the file's layout and dtype."""

    def __init__(self, layout: DiffSynthLayout) -> None:
        super().__init__()
        self.layout = layout
        self.img_in = nn.Linear(LATENT_IN + layout.additional_in_dim, layout.dim)
        self.controlnet_blocks = nn.ModuleList(ControlBlock(layout.dim) for _ in range(layout.n_blocks))

    @property
    def additional_in_dim(self) -> int:
        return self.layout.additional_in_dim

    def control_tokens(self, latent: torch.Tensor) -> torch.Tensor:
        """An unscaled latent [B, C, (1,) h, w] (16 VAE channels, then any mask channels) → control tokens
        [B, h/2·w/2, dim]: the VAE channels moved into Qwen-Image's latent space, padded circularly to whole
        2×2 patches, channels before the patch, then `img_in` (float32 in ComfyUI's call)."""
        x = latent.squeeze(2) if latent.ndim == 5 else latent
        x = torch.cat([WAN21.process_in(x[:, :LATENT_CHANNELS]), x[:, LATENT_CHANNELS:]], dim=1)
        x = F.pad(x, (0, (-x.shape[-1]) % PATCH, 0, (-x.shape[-2]) % PATCH), mode="circular")
        b, c, h, w = x.shape
        tokens = x.reshape(b, c, h // PATCH, PATCH, w // PATCH, PATCH).permute(0, 2, 4, 1, 3, 5)
        p = self.img_in.weight
        return _linear(tokens.reshape(b, (h // PATCH) * (w // PATCH), c * PATCH * PATCH).to(p.device), self.img_in)

    def control_block(self, img: torch.Tensor, control: torch.Tensor, index: int) -> torch.Tensor:
        out: torch.Tensor = self.controlnet_blocks[index](img, control)
        return out


def apply_after_block(net: BlockwiseControlNet, control: torch.Tensor, strength: float, index: int,
                      hidden: torch.Tensor) -> torch.Tensor:
    """ComfyUI's DiffSynthCnetPatch after block `index`: the first len(control) tokens (the image's, not the
    reference latents') plus strength × the patch block of them and the control tokens."""
    n = control.shape[1]
    if index >= len(net.controlnet_blocks):
        raise ModelError(f"the DiffSynth patch has {len(net.controlnet_blocks)} blocks but the model has more "
                         f"(block {index}): it was made for another Qwen-Image")
    img = hidden[:, :n]
    added = img + net.control_block(img, control.to(hidden.dtype), index) * strength
    return torch.cat([added, hidden[:, n:]], dim=1) if hidden.shape[1] > n else added


def load_diffsynth_patch(path: Path, device: torch.device) -> BlockwiseControlNet:
    """A model_patches file as the patch module on `device` in the file's dtype; ModelError naming what the file
    holds when it is another kind of patch or none."""
    src = TensorSource(path)
    layout = parse_diffsynth(src)
    if layout is None:
        for key, what in OTHER_KINDS.items():
            if src.has(key):
                raise ModelError(f"{path.name} is {what}, which this stage does not run yet; ModelPatchLoader "
                                 "here loads Qwen-Image DiffSynth ControlNet patches (canny, depth, inpaint)")
        raise ModelError(f"{path.name} is no model patch this stage knows (no {MARKER})")
    state = {k: src.get(k) for k in src.keys}
    dtype = state["img_in.weight"].dtype
    with torch.device("meta"):
        net = BlockwiseControlNet(layout)
    result = net.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ModelError(f"{path.name}: the {layout.describe()} weights do not fit its layout (missing "
                         f"{result.missing_keys[:4]}, unexpected {result.unexpected_keys[:4]})")
    return net.to(device, dtype if dtype.is_floating_point else torch.float32).eval().requires_grad_(False)
