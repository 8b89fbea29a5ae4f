"""The diffusion stage's nodes, one module per node group, each node declared beside its function.

MODEL / CLIP / VAE values are handles (see `handles`) that the model cache resolves."""

from __future__ import annotations

from comfymesh.diffusion.nodes import (  # noqa: F401  (they declare)
    chroma_radiance,
    conditioning,
    conditioning_ops,
    controlnet,
    controlnet_inpainting,
    custom_sampling,
    deprecated,
    diffsynth,
    flux2,
    flux_conditioning,
    hidream,
    inpaint,
    latent,
    latent_files,
    latent_ops,
    loaders,
    model_patches,
    qwen_image,
    sampling,
    sd3,
    upscale,
    vae,
    vision,
)
from comfymesh.diffusion.nodes.registry import nodes

__all__ = ["nodes"]
