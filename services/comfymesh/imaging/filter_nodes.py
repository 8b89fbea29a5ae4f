"""Pixel filters and alpha compositing (ComfyUI's Canny, ImageBlend, JoinImageWithAlpha and
SplitImageWithAlpha), by ComfyUI's formulas on numpy arrays."""

from __future__ import annotations

from typing import Any

import numpy as np

from comfymesh.catalog.schema import ComboV3, Float, Link, Output
from comfymesh.contracts.errors import NodeInputError
from comfymesh.imaging import canny
from comfymesh.imaging.image_nodes import alpha_fix, resize_mask
from comfymesh.imaging.mask_nodes import as_mask_batch
from comfymesh.imaging.nodes import define_v3, upscale
from comfymesh.outputs import as_image_batch
from comfymesh.stage.node import NodeContext

BLEND_MODES = ["normal", "multiply", "screen", "overlay", "soft_light", "difference"]


@define_v3("Canny", "nodes_canny", "image/preprocessors",
           inputs=[Link("image", "IMAGE", {}), Float("low_threshold", 0.4, min=0.01, max=0.99, step=0.01),
                   Float("high_threshold", 0.8, min=0.01, max=0.99, step=0.01)],
           outputs=[Output("IMAGE")])
def canny_node(ctx: NodeContext, image: Any, low_threshold: float, high_threshold: float) -> tuple[np.ndarray]:
    """Canny: kornia's edge map of the grey image (thresholds on the unnormalised Sobel magnitude), as RGB."""
    images = as_image_batch(image)
    if images.shape[3] != 3:
        raise NodeInputError(f"Canny needs an RGB image; this one has {images.shape[3]} channels. Remove the alpha "
                             "channel first (Split Image with Alpha).", node_id=ctx.node_id)
    edges = canny.canny(canny.grey(images), low_threshold, high_threshold)
    return (np.repeat(edges[..., None], 3, axis=3),)


def _soft_light_curve(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.25, ((16 * x - 12) * x + 4) * x, np.sqrt(x))


def blend(base: np.ndarray, layer: np.ndarray, mode: str) -> np.ndarray:
    """ImageBlend's blend modes, before mixing by the blend factor."""
    if mode == "normal":
        return layer
    if mode == "multiply":
        return base * layer
    if mode == "screen":
        return 1 - (1 - base) * (1 - layer)
    if mode == "overlay":
        return np.where(base <= 0.5, 2 * base * layer, 1 - 2 * (1 - base) * (1 - layer))
    if mode == "soft_light":
        return np.where(layer <= 0.5, base - (1 - 2 * layer) * base * (1 - base),
                        base + (2 * layer - 1) * (_soft_light_curve(base) - base))
    if mode == "difference":
        return base - layer
    raise ValueError(f"unknown blend mode {mode!r}")


@define_v3("ImageBlend", "nodes_post_processing", "image/postprocessing",
           inputs=[Link("image1", "IMAGE", {}), Link("image2", "IMAGE", {}),
                   Float("blend_factor", 0.5, min=0.0, max=1.0, step=0.01), ComboV3("blend_mode", BLEND_MODES)],
           outputs=[Output("IMAGE")])
def image_blend(ctx: NodeContext, image1: Any, image2: Any, blend_factor: float, blend_mode: str) -> tuple[np.ndarray]:
    """ImageBlend: image1·(1-f) + mode(image1, image2)·f, clamped; image2 first takes image1's channel count and
    size (bicubic, centre crop)."""
    base, layer = alpha_fix(as_image_batch(image1), as_image_batch(image2))
    if base.shape != layer.shape:
        layer = upscale(layer, "bicubic", base.shape[2], base.shape[1], "center")
    mixed = base * (1 - blend_factor) + blend(base, layer, blend_mode) * blend_factor
    return (np.clip(mixed, 0.0, 1.0).astype(np.float32),)


@define_v3("JoinImageWithAlpha", "nodes_compositing", "mask/compositing", display_name="Join Image with Alpha",
           inputs=[Link("image", "IMAGE", {}), Link("alpha", "MASK", {})], outputs=[Output("IMAGE")])
def join_image_with_alpha(ctx: NodeContext, image: Any, alpha: Any) -> tuple[np.ndarray]:
    """JoinImageWithAlpha: RGBA images whose alpha is 1 - mask (mask resized bilinearly to the image), for the
    first min(images, masks) of the batch."""
    images, masks = as_image_batch(image), as_mask_batch(alpha)
    height, width = images.shape[1:3]
    if masks.shape[1:] != (height, width):
        masks = resize_mask(masks, width, height)
    count = min(len(images), len(masks))
    opacity = (1.0 - masks[:count])[..., None]
    return (np.concatenate([images[:count, :, :, :3], opacity], axis=3).astype(np.float32),)


@define_v3("SplitImageWithAlpha", "nodes_compositing", "mask/compositing", display_name="Split Image with Alpha",
           inputs=[Link("image", "IMAGE", {})], outputs=[Output("IMAGE"), Output("MASK")])
def split_image_with_alpha(ctx: NodeContext, image: Any) -> tuple[np.ndarray, np.ndarray]:
    """SplitImageWithAlpha: the RGB channels and the mask 1 - alpha (0 where there is no alpha)."""
    images = as_image_batch(image)
    alpha = images[..., 3] if images.shape[3] > 3 else np.ones(images.shape[:3], np.float32)
    return images[..., :3].copy(), (1.0 - alpha).astype(np.float32)
