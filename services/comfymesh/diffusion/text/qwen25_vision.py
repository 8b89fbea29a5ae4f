"""Qwen2.5-VL's vision encoder as ComfyUI runs it for Qwen-Image Edit: the `visual.` tower of a qwen_2.5_vl_7b
file, read from its shapes (16 heads and full attention in blocks 7, 15, 23 and 31, as ComfyUI fixes them), built
as transformers' Qwen2_5_VisionTransformerPretrainedModel, fed ComfyUI's image preprocessing, and returning its
merged patch embeddings in ComfyUI's order.

ComfyUI's preprocessing: the image resized bilinearly to sides that are multiples of 28 (the nearest, kept
between 3 136 and 12 845 056 pixels), normalised with CLIP's mean and deviation, doubled in time, and cut into
2×14×14 patches grouped by 2×2 merge cells. ComfyUI hands the merged embeddings on in the tower's window order
(it does not restore row order after the windowed blocks), so this does the same.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.models.tensor_source import TensorSource

PREFIX = "visual."
HEADS = 16
FULL_ATTENTION_BLOCKS = (7, 15, 23, 31)
WINDOW = 112
PATCH, TEMPORAL_PATCH, MERGE = 14, 2, 2
MIN_PIXELS, MAX_PIXELS = 3_136, 12_845_056
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class VisionLayout:
    width: int
    depth: int
    intermediate: int
    out_width: int

    def describe(self) -> str:
        return f"Qwen2.5-VL vision encoder (width {self.width}, {self.depth} blocks)"


def parse_vision(src: TensorSource) -> VisionLayout | None:
    """The vision tower of a Qwen2.5-VL file, None if the file has none."""
    if not src.has(PREFIX + "patch_embed.proj.weight"):
        return None
    width = src.shape(PREFIX + "patch_embed.proj.weight")[0]
    rx = re.compile(re.escape(PREFIX) + r"blocks\.(\d+)\.")
    layout = VisionLayout(width=width, depth=len({m.group(1) for k in src.keys if (m := rx.match(k))}),
                          intermediate=src.shape(PREFIX + "blocks.0.mlp.gate_proj.weight")[0],
                          out_width=src.shape(PREFIX + "merger.mlp.2.weight")[0])
    if width % HEADS or (width // HEADS) % 4:
        raise ModelError(f"{src.path.name}: {layout.describe()} cannot be split into {HEADS} heads with rotary pairs")
    return layout


def build_vision(src: TensorSource, layout: VisionLayout, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    config = Qwen2_5_VLVisionConfig(depth=layout.depth, hidden_size=layout.width, intermediate_size=layout.intermediate,
                                    num_heads=HEADS, out_hidden_size=layout.out_width, window_size=WINDOW,
                                    patch_size=PATCH, temporal_patch_size=TEMPORAL_PATCH, spatial_merge_size=MERGE,
                                    fullatt_block_indexes=list(FULL_ATTENTION_BLOCKS))
    state = {k[len(PREFIX):]: v.to(device=device, dtype=dtype) for k, v in src.with_prefix(PREFIX).items()}
    with torch.device("meta"):
        model: Any = Qwen2_5_VisionTransformerPretrainedModel._from_config(config)
    result = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in result.missing_keys if not k.startswith("rotary_pos_emb.")]
    if missing or result.unexpected_keys:
        raise ModelError(f"{src.path.name}: the vision weights do not fit {layout.describe()} (missing {missing[:4]}, "
                         f"unexpected {result.unexpected_keys[:4]})")
    with torch.device(device):
        model.rotary_pos_emb = type(model.rotary_pos_emb)(model.config)
    module: torch.nn.Module = model.eval().requires_grad_(False)
    return module


def resized_side(height: int, width: int) -> tuple[int, int]:
    """The sides ComfyUI resizes an image to: multiples of 28, within the pixel bounds."""
    factor = PATCH * MERGE
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > MAX_PIXELS:
        beta = math.sqrt(height * width / MAX_PIXELS)
        h, w = max(factor, math.floor(height / beta / factor) * factor), max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < MIN_PIXELS:
        beta = math.sqrt(MIN_PIXELS / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def patches(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE [B, H, W, C] (its first image) → (patches [h·w, 3·2·14·14], grid [[1, h, w]]) in 14-pixel patches."""
    first = image[0, ..., :3].float().permute(2, 0, 1)
    h, w = resized_side(first.shape[1], first.shape[2])
    resized = F.interpolate(first[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    pixels = ((resized - mean) / std)[None].repeat(TEMPORAL_PATCH, 1, 1, 1)
    gh, gw = h // PATCH, w // PATCH
    cut = pixels.reshape(1, TEMPORAL_PATCH, 3, gh // MERGE, MERGE, PATCH, gw // MERGE, MERGE, PATCH)
    flat = cut.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(gh * gw, 3 * TEMPORAL_PATCH * PATCH * PATCH)
    return flat, torch.tensor([[1, gh, gw]])


def encode_image(vision: Any, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings [h·w/4, D] float32 in ComfyUI's (window) order, grid [[1, h, w]]) of an image."""
    from transformers.vision_utils import get_vision_window_index

    flat, grid = patches(image)
    param = next(vision.parameters())
    with torch.no_grad():
        merged = vision(flat.to(param.device, param.dtype), grid.to(param.device)).pooler_output
    window_index, _ = get_vision_window_index(grid, spatial_merge_size=MERGE, window_size=WINDOW, patch_size=PATCH)
    return merged[window_index.to(merged.device)].float(), grid
