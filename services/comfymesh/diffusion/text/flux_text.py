"""FLUX.1's prompt conditioning as ComfyUI builds it (FluxClipModel): T5-XXL's last hidden state is the
context (end token, then pad tokens to at least 256, no attention mask, no truncation) and CLIP-L gives only
its pooled output (final norm at the first end token of the first 77-token window, unprojected).

The encoders come from DualCLIPLoader type `flux` (a CLIP-L file and a T5-XXL file, in either order) or from
an all-in-one FLUX checkpoint (`text_encoders.clip_l.transformer.`, `text_encoders.t5xxl.transformer.`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.text import encoder_files
from comfymesh.diffusion.text.sd3_text import CLIP_L, clip_windows, encode_clip_windows
from comfymesh.diffusion.text.t5 import encode_t5_weighted, load_t5_file

T5_MIN_LENGTH = 256  # ComfyUI's FLUX T5XXL tokenizer pads every prompt to at least 256 tokens
L_POOLED = 768  # CLIP-L's pooled width: zeros when no CLIP-L is loaded
CHECKPOINT_CLIP_L = "text_encoders.clip_l.transformer."


def load_text_encoder_files(paths: list[Path], device: torch.device) -> dict[str, Any]:
    """Role ("l", "t5") → encoder for DualCLIPLoader type `flux`: one CLIP-L file and one T5-XXL file, in
    either order; ModelError naming what each file holds otherwise."""
    files = encoder_files.sort_encoder_files(paths)
    clips = files.clips
    if len(files.t5s) != 1 or len(clips) != 1 or clips[0][1].openclip or clips[0][1].role == "g":
        raise ModelError(f"CLIP type 'flux' takes one CLIP-L and one T5-XXL file; found {files.found()}")
    src, layout = clips[0]
    return {"l": encoder_files.build_clip_tower(src, layout, device, role="l"),
            "t5": load_t5_file(files.t5s[0], device)}


def load_checkpoint_encoders(src: TensorSource, device: torch.device) -> dict[str, Any]:
    """The text encoders an all-in-one FLUX checkpoint holds (ComfyUI loads whichever are there)."""
    return encoder_files.load_checkpoint_encoders(src, {"l": CHECKPOINT_CLIP_L}, device)


def clip_l_pooled(clip_l: Any | None, text: str, stop_at_clip_layer: int | None = None) -> torch.Tensor:
    """CLIP-L's pooled output [1, 768-or-width] of a prompt; zeros when no CLIP-L is loaded."""
    if clip_l is None:
        return torch.zeros(1, L_POOLED)
    _, pooled = encode_clip_windows(clip_l, CLIP_L, clip_windows(text, CLIP_L), stop_at_clip_layer)
    return pooled


def encode_flux(encoders: dict[str, Any], clip_l_text: str, t5_text: str,
                stop_at_clip_layer: int | None = None, extras: dict[str, Any] | None = None,
                clip: dict[str, Any] | None = None) -> list[list[Any]]:
    """The conditioning of a FLUX prompt pair: [[T5 context [1, T, D], {pooled_output, **extras}]]; the CLIP
    handle's T5TokenizerOptions (t5xxl_min_length, t5xxl_min_padding) replace the 256-token minimum."""
    t5 = encoders.get("t5")
    if t5 is None:
        raise ModelError("the FLUX text encoders have no T5-XXL: load one with DualCLIPLoader type 'flux'")
    options = clip or {}
    min_length = options.get("t5xxl_min_length", T5_MIN_LENGTH)
    context = encode_t5_weighted(t5, t5_text, int(min_length), min_padding=int(options.get("t5xxl_min_padding", 0)))
    pooled = clip_l_pooled(encoders.get("l"), clip_l_text, stop_at_clip_layer)
    return [[context, {"pooled_output": pooled, **(extras or {})}]]
