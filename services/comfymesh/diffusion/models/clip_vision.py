"""CLIP vision models (models/clip_vision) in the HF CLIPVisionModelWithProjection naming
(`vision_model.…`, `visual_projection.weight`), built with transformers from the file's shapes, and
ComfyUI's image preprocessing and encode outputs.

CLIP_VISION_OUTPUT, the value CLIPVisionEncode passes on, is a dict of arrays: `image_embeds` [B, P],
`last_hidden_state` [B, T, H] and `penultimate_hidden_states` [B, T, H] (the second-to-last layer's output)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from comfymesh.contracts.errors import ModelError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREFIX = "vision_model."
# every CLIP vision config ComfyUI ships (ViT-L, ViT-H, ViT-bigG) has 16 heads; ViT-L/14 alone uses quick_gelu
HEADS = 16
VIT_L_LAYERS = 24
CropMode = str  # "center" | "none"


class ClipVision(nn.Module):
    """A CLIP vision tower with its projection, and the square size its position embeddings were made for."""

    def __init__(self, model: nn.Module, image_size: int) -> None:
        super().__init__()
        self.model = model
        self.image_size = image_size

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Preprocessed pixels [B, 3, S, S] → CLIP_VISION_OUTPUT."""
        out = self.model(pixel_values=pixels, output_hidden_states=True)
        return {"image_embeds": out.image_embeds, "last_hidden_state": out.last_hidden_state,
                "penultimate_hidden_states": out.hidden_states[-2]}


def _layers(state: dict[str, torch.Tensor]) -> int:
    return 1 + max(int(key.split(".")[3]) for key in state if key.startswith(f"{PREFIX}encoder.layers."))


def load_clip_vision(path: Path) -> ClipVision:
    """The model of a clip_vision file; ModelError when its keys are not the HF CLIP vision naming."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    state = load_file(str(path))
    if "visual.transformer.resblocks.0.attn.in_proj_weight" in state:
        raise ModelError(f"clip_vision file {path.name} is in the OpenCLIP naming, which is not supported yet: "
                         "use the HF CLIPVisionModelWithProjection export of the same model")
    patch = state.get(f"{PREFIX}embeddings.patch_embedding.weight")
    if patch is None or "visual_projection.weight" not in state:
        raise ModelError(f"clip_vision file {path.name} is not a CLIP vision model (no {PREFIX}embeddings."
                         "patch_embedding.weight or visual_projection.weight)")
    hidden, patch_size = int(patch.shape[0]), int(patch.shape[2])
    positions = int(state[f"{PREFIX}embeddings.position_embedding.weight"].shape[0])
    grid = math.isqrt(positions - 1)
    layers = _layers(state)
    if hidden % HEADS or grid * grid != positions - 1:
        raise ModelError(f"clip_vision file {path.name}: width {hidden} or {positions} positions match no CLIP "
                         "vision layout")
    config = CLIPVisionConfig(
        hidden_size=hidden, intermediate_size=int(state[f"{PREFIX}encoder.layers.0.mlp.fc1.weight"].shape[0]),
        num_hidden_layers=layers, num_attention_heads=HEADS, image_size=grid * patch_size, patch_size=patch_size,
        projection_dim=int(state["visual_projection.weight"].shape[0]), layer_norm_eps=1e-5,
        hidden_act="quick_gelu" if layers == VIT_L_LAYERS else "gelu")
    model = CLIPVisionModelWithProjection(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [key for key in missing if not key.endswith("position_ids")]
    if missing or unexpected:
        raise ModelError(f"clip_vision file {path.name} does not fit a CLIP vision model: missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]}")
    return ClipVision(model.eval(), grid * patch_size)


def preprocess(image: torch.Tensor, size: int, crop: CropMode = "center") -> torch.Tensor:
    """IMAGE [B, H, W, C] → normalised pixels [B, 3, size, size], as ComfyUI's clip_preprocess: the shortest
    side to `size` (bicubic, antialiased) and a centre crop, or both sides to `size` with crop "none";
    then quantised to 8 bits and normalised with CLIP's mean and std."""
    x = image[..., :3].movedim(-1, 1).float()
    if x.shape[2] != size or x.shape[3] != size:
        if crop == "center":
            scale = size / min(x.shape[2], x.shape[3])
            target = (round(scale * x.shape[2]), round(scale * x.shape[3]))
        else:
            target = (size, size)
        x = F.interpolate(x, size=target, mode="bicubic", antialias=True)
        top, left = (x.shape[2] - size) // 2, (x.shape[3] - size) // 2
        x = x[:, :, top:top + size, left:left + size]
    x = torch.clip(255.0 * x, 0, 255).round() / 255.0
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def encode_image(model: ClipVision, image: torch.Tensor, crop: CropMode = "center") -> dict[str, torch.Tensor]:
    """CLIPVisionEncode: CLIP_VISION_OUTPUT (float32, CPU) of an IMAGE batch."""
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model(preprocess(image.to(device), model.image_size, crop))
    return {key: value.float().cpu() for key, value in out.items()}


def make_tiny_clip_vision(path: Path, *, hidden: int = 32, layers: int = 2, projection: int = 32, patch: int = 14,
                          image_size: int = 224, seed: int = 0) -> Path:
    """A random-weight CLIP vision model file in the HF CLIPVisionModelWithProjection naming."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                              num_attention_heads=HEADS, image_size=image_size, patch_size=patch,
                              projection_dim=projection, layer_norm_eps=1e-5, hidden_act="gelu")
    model = CLIPVisionModelWithProjection(config)
    state = {key: value.contiguous() for key, value in model.state_dict().items() if not key.endswith("position_ids")}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path
