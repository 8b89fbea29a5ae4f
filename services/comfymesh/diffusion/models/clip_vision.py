"""CLIP vision models (models/clip_vision) in the HF CLIPVisionModelWithProjection naming
(`vision_model.…`, `visual_projection.weight`) or OpenCLIP's (`visual.…`, converted), and SigLIP vision towers
(FLUX Redux's sigclip_vision_patch14_384: no class token, a biased patch embedding, a square position grid),
built with transformers from the file's shapes, and ComfyUI's image preprocessing and encode outputs.

CLIP_VISION_OUTPUT, the value CLIPVisionEncode passes on, is a dict of arrays: `image_embeds` [B, P],
`last_hidden_state` [B, T, H] and `penultimate_hidden_states` [B, T, H] (the second-to-last layer's output);
a SigLIP tower of 20 layers or more adds `style_hidden_states` [B, 2, T, H]: the outputs of layers -20 and -11,
the two of ComfyUI's `all_hidden_states` USOStyleReference reads besides the penultimate one. Keeping every layer,
as ComfyUI does in memory, would write 27 × 729 × 1152 floats (about 90 MB) to the artifact store per encode of
sigclip_vision_patch14_384, Redux's included; these two are 6.7 MB."""

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
STYLE_LAYERS = (-20, -11)  # ComfyUI's all_hidden_states indexes (layer outputs) kept as style_hidden_states


class ClipVision(nn.Module):
    """A CLIP vision tower with its projection, the square size its position embeddings were made for and the
    normalisation its pixels take."""

    def __init__(self, model: nn.Module, image_size: int, mean: tuple[float, ...] = CLIP_MEAN,
                 std: tuple[float, ...] = CLIP_STD) -> None:
        super().__init__()
        self.model = model
        self.image_size = image_size
        self.mean, self.std = mean, std

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Preprocessed pixels [B, 3, S, S] → CLIP_VISION_OUTPUT."""
        out = self.model(pixel_values=pixels, output_hidden_states=True)
        return {"image_embeds": out.image_embeds, "last_hidden_state": out.last_hidden_state,
                "penultimate_hidden_states": out.hidden_states[-2]}


class SiglipVision(ClipVision):
    """A SigLIP vision tower as ComfyUI runs it: no projection and no pooling head, so image_embeds is the whole
    post-layernorm sequence, as last_hidden_state is."""

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.model(pixel_values=pixels, output_hidden_states=True)
        result = {"image_embeds": out.last_hidden_state, "last_hidden_state": out.last_hidden_state,
                  "penultimate_hidden_states": out.hidden_states[-2]}
        layers = out.hidden_states[1:]  # the layers' outputs (HF's hidden_states[0] is the embeddings)
        if len(layers) >= -min(STYLE_LAYERS):
            result["style_hidden_states"] = torch.stack([layers[i] for i in STYLE_LAYERS], dim=1)
        return result


SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
# ComfyUI's SigLIP configs by (positions, patch): their image size, which the patch grid floors (384 // 14 = 27)
SIGLIP_IMAGE_SIZES = {(729, 14): 384, (1024, 16): 512}


def is_siglip(state: dict[str, torch.Tensor]) -> bool:
    """A SigLIP vision tower: a biased patch embedding, no class token, a square grid of positions."""
    positions = state.get(f"{PREFIX}embeddings.position_embedding.weight")
    return (f"{PREFIX}embeddings.patch_embedding.bias" in state and f"{PREFIX}embeddings.class_embedding" not in state
            and positions is not None and math.isqrt(positions.shape[0]) ** 2 == positions.shape[0])


def load_siglip(path: Path, state: dict[str, torch.Tensor]) -> SiglipVision:
    """The SigLIP model of a clip_vision file, with ComfyUI's settings (16 heads, tanh GELU, LayerNorm ε 1e-5);
    its pooling head, which ComfyUI leaves unused, is not loaded."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    hidden, _, patch_size, _ = state[f"{PREFIX}embeddings.patch_embedding.weight"].shape
    positions = int(state[f"{PREFIX}embeddings.position_embedding.weight"].shape[0])
    image_size = SIGLIP_IMAGE_SIZES.get((positions, int(patch_size)), math.isqrt(positions) * int(patch_size))
    if hidden % HEADS:
        raise ModelError(f"clip_vision file {path.name}: SigLIP width {hidden} does not split into {HEADS} heads")
    config = SiglipVisionConfig(
        hidden_size=int(hidden), intermediate_size=int(state[f"{PREFIX}encoder.layers.0.mlp.fc1.weight"].shape[0]),
        num_hidden_layers=_layers(state), num_attention_heads=HEADS, image_size=image_size,
        patch_size=int(patch_size), hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-5, vision_use_head=False)
    model = SiglipVisionModel(config)
    tower = {k.removeprefix(PREFIX): v for k, v in state.items()
             if k.startswith(PREFIX) and not k.startswith(f"{PREFIX}head.")}
    missing, unexpected = model.load_state_dict(tower, strict=False)
    missing = [key for key in missing if not key.endswith("position_ids")]
    if missing or unexpected:
        raise ModelError(f"clip_vision file {path.name} does not fit a SigLIP vision model: missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]}")
    return SiglipVision(model.eval(), image_size, SIGLIP_MEAN, SIGLIP_STD)


def _layers(state: dict[str, torch.Tensor]) -> int:
    return 1 + max(int(key.split(".")[3]) for key in state if key.startswith(f"{PREFIX}encoder.layers."))


OPEN_CLIP = "visual."
# OpenCLIP's visual tower names → HF's, for the tensors that only move (attention's fused qkv is split apart)
_OPEN_CLIP_NAMES = {"class_embedding": "embeddings.class_embedding", "conv1.weight": "embeddings.patch_embedding.weight",
                    "positional_embedding": "embeddings.position_embedding.weight",
                    "ln_pre.weight": "pre_layrnorm.weight", "ln_pre.bias": "pre_layrnorm.bias",
                    "ln_post.weight": "post_layernorm.weight", "ln_post.bias": "post_layernorm.bias"}
_OPEN_CLIP_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
                    "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def from_open_clip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An OpenCLIP visual tower (`visual.…`) in the HF naming, as ComfyUI converts it: `proj` transposed into
    `visual_projection.weight`, each block's fused `in_proj` split into q, k and v."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith(OPEN_CLIP):
            continue
        name = key.removeprefix(OPEN_CLIP)
        if name == "proj":
            out["visual_projection.weight"] = value.t().contiguous()
        elif name.startswith("transformer.resblocks."):
            _, _, block, rest = name.split(".", 3)
            layer = f"{PREFIX}encoder.layers.{block}."
            if rest.startswith("attn.in_proj_"):
                kind = rest.rsplit("_", 1)[1]
                for part, chunk in zip(("q", "k", "v"), value.chunk(3), strict=True):
                    out[f"{layer}self_attn.{part}_proj.{kind}"] = chunk.contiguous()
            else:
                module, kind = rest.rsplit(".", 1)
                out[f"{layer}{_OPEN_CLIP_BLOCK[module]}.{kind}"] = value
        elif name in _OPEN_CLIP_NAMES:
            out[PREFIX + _OPEN_CLIP_NAMES[name]] = value
    return out


def load_clip_vision(path: Path) -> ClipVision:
    """The model of a clip_vision file; ModelError when its keys are not the HF CLIP vision naming."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    state = load_file(str(path))
    if f"{OPEN_CLIP}transformer.resblocks.0.attn.in_proj_weight" in state:
        state = from_open_clip(state)
    if is_siglip(state):
        return load_siglip(path, state)
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


def preprocess(image: torch.Tensor, size: int, crop: CropMode = "center", mean: tuple[float, ...] = CLIP_MEAN,
               std: tuple[float, ...] = CLIP_STD) -> torch.Tensor:
    """IMAGE [B, H, W, C] → normalised pixels [B, 3, size, size], as ComfyUI's clip_preprocess: the shortest
    side to `size` (bicubic, antialiased) and a centre crop, or both sides to `size` with crop "none";
    then quantised to 8 bits and normalised with `mean` and `std` (CLIP's by default)."""
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
    shift = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    spread = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - shift) / spread


def encode_image(model: ClipVision, image: torch.Tensor, crop: CropMode = "center") -> dict[str, torch.Tensor]:
    """CLIPVisionEncode: CLIP_VISION_OUTPUT (float32, CPU) of an IMAGE batch."""
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model(preprocess(image.to(device), model.image_size, crop, model.mean, model.std))
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


def make_tiny_siglip_vision(path: Path, *, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A random-weight SigLIP vision tower in the layout of sigclip_vision_patch14_384 (`vision_model.…` with
    its pooling head; 14-pixel patches on a 27×27 grid) at a reduced width and depth."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    config = SiglipVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                                num_attention_heads=HEADS, image_size=384, patch_size=14,
                                hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-5)
    model = SiglipVisionModel(config)
    state = {PREFIX + key: value.contiguous() for key, value in model.state_dict().items()
             if not key.endswith("position_ids")}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path
