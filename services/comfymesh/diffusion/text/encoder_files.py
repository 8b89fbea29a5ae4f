"""The text encoders of a family's CLIP loader files and all-in-one checkpoints: files sorted into T5 and CLIP
towers, and the towers built with errors naming the file (FLUX's DualCLIPLoader, SD3's CLIP loaders)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from comfymesh.diffusion.models.recognise import ClipLayout
from comfymesh.diffusion.models.tensor_source import TensorSource, converted
from comfymesh.diffusion.text.t5 import load_t5_file, parse_t5


@dataclass(frozen=True)
class EncoderFiles:
    """A CLIP loader's files: the T5 encoders and the CLIP towers (with the layout each file's shapes give)."""

    t5s: list[TensorSource]
    clips: list[tuple[TensorSource, ClipLayout]]

    def found(self) -> str:
        """What each file holds, for a refusal that names them."""
        from comfymesh.diffusion.models.split_files import describe_encoder

        return "; ".join([f"{s.path.name}: {describe_encoder(lay)}" for s, lay in self.clips]
                         + [f"{s.path.name}: T5" for s in self.t5s])


def sort_encoder_files(paths: list[Path]) -> EncoderFiles:
    """The files as T5 encoders and CLIP towers; ModelError for a file that is neither."""
    from comfymesh.diffusion.models.split_files import text_encoder_layout

    sources = [TensorSource(p) for p in paths]
    t5s = [s for s in sources if parse_t5(s) is not None]
    return EncoderFiles(t5s, [(s, text_encoder_layout(s)) for s in sources if s not in t5s])


def build_clip_tower(src: TensorSource, layout: ClipLayout, device: torch.device,
                     role: str | None = None) -> torch.nn.Module:
    """The CLIP tower of `layout` on `device`, frozen, as `role` when given (the role the loader assigns, where
    the width alone cannot tell it); ModelError naming the file when it cannot be converted."""
    from comfymesh.diffusion.models.convert import Placement, build_clip

    if role is not None:
        layout = dataclasses.replace(layout, role=role)
    return converted(src, "text encoder", lambda: build_clip(src, layout, Placement(device)).eval().requires_grad_(False))


def load_checkpoint_encoders(src: TensorSource, clip_prefixes: dict[str, str], device: torch.device) -> dict[str, Any]:
    """Role → encoder for the text encoders an all-in-one checkpoint holds: each CLIP role found at its prefix,
    and "t5" for a T5 encoder; ComfyUI loads whichever are there."""
    from comfymesh.diffusion.models.recognise import parse_clip

    out: dict[str, Any] = {}
    for role, prefix in clip_prefixes.items():
        layout = parse_clip(src, role, prefix)
        if layout is not None:
            out[role] = build_clip_tower(src, layout, device)
    if parse_t5(src) is not None:
        out["t5"] = load_t5_file(src, device)
    return out
