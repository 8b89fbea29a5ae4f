"""The nodes every image_qwen_image* template starts from, as the frontend posts them: UNETLoader, CLIPLoader
type `qwen_image` and VAELoader on the tiny files' names, and ModelSamplingAuraFlow's shift on the model."""

from __future__ import annotations

from typing import Any

from comfymesh.diffusion.models import tiny_qwen_image


def qwen_image_loaders(shift: float = 3.1) -> dict[str, Any]:
    """Nodes 37 (model), 38 (text encoder), 39 (VAE) and 66 (the shifted model), fresh dicts on every call (tests
    edit copies of their templates)."""
    return {
        "37": {"inputs": {"unet_name": tiny_qwen_image.DIFFUSION_MODEL, "weight_dtype": "default"},
               "class_type": "UNETLoader"},
        "38": {"inputs": {"clip_name": tiny_qwen_image.TEXT_ENCODER, "type": "qwen_image", "device": "default"},
               "class_type": "CLIPLoader"},
        "39": {"inputs": {"vae_name": tiny_qwen_image.VAE}, "class_type": "VAELoader"},
        "66": {"inputs": {"shift": shift, "model": ["37", 0]}, "class_type": "ModelSamplingAuraFlow"},
    }
