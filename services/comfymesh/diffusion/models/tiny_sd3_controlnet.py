"""Tiny random-weight SD3.5 ControlNets in Stability's format (ComfyUI's ControlNetEmbedder keys: `t_embedder`,
`y_embedder`, self-attention `transformer_blocks.N`, `controlnet_blocks.N`, `pos_embed_input`, a `control_type`
scalar; no patch embedder, which is the SD3 model's), shaped for tiny_sd3's MMDiT: width 128 (ComfyUI reads the
model's depth 2 from it), one block whose residual feeds both joint blocks."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from comfymesh.diffusion.models.sd3_controlnet import BLUR, CANNY
from comfymesh.diffusion.models.tiny_sd3 import CLIP_G_WIDTH, CLIP_L_WIDTH, LATENT_CHANNELS, Shapes, tensors

# the SD3.5 Large ControlNets the templates load, by control type
TEMPLATE_FILES = {"sd3.5_large_controlnet_blur.safetensors": BLUR, "sd3.5_large_controlnet_canny.safetensors": CANNY}


def controlnet_shapes(width: int = 128, layers: int = 1, pooled_dim: int = CLIP_L_WIDTH + CLIP_G_WIDTH,
                      patch: int = 2, channels: int = LATENT_CHANNELS) -> Shapes:
    s: Shapes = {
        "t_embedder.mlp.0.weight": (width, 256), "t_embedder.mlp.0.bias": (width,),
        "t_embedder.mlp.2.weight": (width, width), "t_embedder.mlp.2.bias": (width,),
        "y_embedder.mlp.0.weight": (width, pooled_dim), "y_embedder.mlp.0.bias": (width,),
        "y_embedder.mlp.2.weight": (width, width), "y_embedder.mlp.2.bias": (width,),
        "pos_embed_input.proj.weight": (width, channels, patch, patch), "pos_embed_input.proj.bias": (width,),
    }
    for i in range(layers):
        b = f"transformer_blocks.{i}."
        s[b + "adaLN_modulation.1.weight"], s[b + "adaLN_modulation.1.bias"] = (6 * width, width), (6 * width,)
        s[b + "attn.qkv.weight"], s[b + "attn.qkv.bias"] = (3 * width, width), (3 * width,)
        s[b + "attn.proj.weight"], s[b + "attn.proj.bias"] = (width, width), (width,)
        s[b + "mlp.fc1.weight"], s[b + "mlp.fc1.bias"] = (4 * width, width), (4 * width,)
        s[b + "mlp.fc2.weight"], s[b + "mlp.fc2.bias"] = (width, 4 * width), (width,)
        s[f"controlnet_blocks.{i}.weight"], s[f"controlnet_blocks.{i}.bias"] = (width, width), (width,)
    return s


def make_tiny_sd35_controlnet(path: str | Path, control_type: int = BLUR, seed: int = 0,
                              dtype: torch.dtype = torch.float16, **shape: int) -> Path:
    """Write one ControlNet file of `control_type` (0 blur, 1 canny, 2 depth) at `path`."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = tensors(controlnet_shapes(**shape), seed, dtype)
    state["control_type"] = torch.tensor(float(control_type))
    save_file(state, str(out), metadata={"format": "pt"})
    return out


def make_template_files(models: str | Path, seed: int = 0) -> list[Path]:
    """The templates' SD3.5 Large ControlNets under models/controlnet/."""
    return [make_tiny_sd35_controlnet(Path(models) / "controlnet" / name, kind, seed + kind)
            for name, kind in TEMPLATE_FILES.items()]
