"""Image compositing, padding and batch nodes (ComfyUI's ImageCompositeMasked, ImagePadForOutpaint and
`nodes_images` batch and scale nodes), on numpy arrays; resizing goes through ImageMagick (`ops.resize`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from comfymesh.catalog.schema import MAX_RESOLUTION, Boolean, ComboV3, Int, Link, Output
from comfymesh.imaging import ops
from comfymesh.imaging.mask_nodes import as_mask_batch
from comfymesh.imaging.nodes import define_v3, nodes
from comfymesh.outputs import as_image_batch
from comfymesh.stage.node import NodeContext

# ComfyUI lists "bilinear" twice for this node
MAX_DIMENSION_METHODS = ["area", "lanczos", "bilinear", "nearest-exact", "bilinear", "bicubic"]


def repeat_to_batch(array: np.ndarray, size: int) -> np.ndarray:
    """The first `size` entries of the batch repeated end to end (ComfyUI's repeat_to_batch_size)."""
    if array.shape[0] < size:
        array = np.concatenate([array] * math.ceil(size / array.shape[0]))
    return array[:size]


def resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """Masks resized bilinearly, as grey images."""
    grey = np.repeat(mask[..., None], 3, axis=3)
    return ops.resize(grey, width, height, "bilinear")[..., 0]


def alpha_fix(destination: np.ndarray, source: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The source given the destination's channel count: alpha dropped, or an opaque alpha added."""
    if destination.shape[3] < source.shape[3]:
        return destination, source[..., :destination.shape[3]]
    if destination.shape[3] > source.shape[3]:
        opaque = np.ones((*source.shape[:3], 1), np.float32)
        return destination, np.concatenate([source, opaque], axis=3)
    return destination, source


@define_v3("ImageCompositeMasked", "nodes_mask", "image",
           inputs=[Link("destination", "IMAGE", {}), Link("source", "IMAGE", {}),
                   Int("x", 0, min=0, max=MAX_RESOLUTION, step=1), Int("y", 0, min=0, max=MAX_RESOLUTION, step=1),
                   Boolean("resize_source", False), Link("mask", "MASK", {}, section="optional")],
           outputs=[Output("IMAGE")])
def image_composite_masked(ctx: NodeContext, destination: Any, source: Any, x: int, y: int, resize_source: bool,
                           mask: Any = None) -> tuple[np.ndarray]:
    """ImageCompositeMasked: source blended over destination at (x, y) by the mask (bilinearly resized to
    the source), source and mask repeated or cut to the destination's batch."""
    dst, src = alpha_fix(as_image_batch(destination).copy(), as_image_batch(source))
    batch, dst_height, dst_width = dst.shape[:3]
    if resize_source:
        src = ops.resize(src, dst_width, dst_height, "bilinear")
    src = repeat_to_batch(src, batch)
    src_height, src_width = src.shape[1:3]
    if mask is None:
        weight = np.ones(src.shape[:3], np.float32)
    else:
        weight = repeat_to_batch(resize_mask(as_mask_batch(mask), src_width, src_height), batch)
    x, y = min(x, dst_width), min(y, dst_height)
    visible_height, visible_width = min(src_height, dst_height - y), min(src_width, dst_width - x)
    if visible_height > 0 and visible_width > 0:
        w = weight[:, :visible_height, :visible_width, None]
        region = dst[:, y:y + visible_height, x:x + visible_width]
        dst[:, y:y + visible_height, x:x + visible_width] = w * src[:, :visible_height, :visible_width] + (1 - w) * region
    return (dst,)


def _outpaint_feather(height: int, width: int, sides: tuple[int, int, int, int], feathering: int) -> np.ndarray:
    """ImagePadForOutpaint's mask over the original pixels: ((f - d) / f)² within f of a padded side, d the
    distance to the nearest padded side (an unpadded side counts as the full height or width away)."""
    top, bottom, left, right = sides
    inner = np.zeros((height, width), np.float32)
    if feathering > 0 and feathering * 2 < height and feathering * 2 < width:
        rows, cols = np.arange(height)[:, None], np.arange(width)[None, :]
        distance = np.minimum.reduce(np.broadcast_arrays(
            rows if top else np.full_like(rows, height), height - rows if bottom else np.full_like(rows, height),
            cols if left else np.full_like(cols, width), width - cols if right else np.full_like(cols, width)))
        ramp = ((feathering - distance) / feathering).astype(np.float32)
        inner = np.where(distance < feathering, ramp * ramp, np.float32(0))
    return inner


@nodes.define("ImagePadForOutpaint", category="image", display_name="Pad Image for Outpainting",
    inputs=[
        Link("image", "IMAGE"),
        Int("left", 0, min=0, max=MAX_RESOLUTION, step=8),
        Int("top", 0, min=0, max=MAX_RESOLUTION, step=8),
        Int("right", 0, min=0, max=MAX_RESOLUTION, step=8),
        Int("bottom", 0, min=0, max=MAX_RESOLUTION, step=8),
        Int("feathering", 40, min=0, max=MAX_RESOLUTION, step=1),
    ],
    outputs=[Output("IMAGE"), Output("MASK")],
)
def image_pad_for_outpaint(ctx: NodeContext, image: Any, left: int, top: int, right: int, bottom: int,
                           feathering: int) -> tuple[np.ndarray, np.ndarray]:
    """ImagePadForOutpaint: grey (0.5) borders added, and a mask that is 1 on them, feathered inwards."""
    images = as_image_batch(image)
    batch, height, width, channels = images.shape
    ctx.check_size(width + left + right, height + top + bottom, batch)
    padded = np.full((batch, height + top + bottom, width + left + right, channels), 0.5, np.float32)
    padded[:, top:top + height, left:left + width] = images
    mask = np.ones((1, height + top + bottom, width + left + right), np.float32)
    mask[0, top:top + height, left:left + width] = _outpaint_feather(height, width, (top, bottom, left, right),
                                                                     feathering)
    return padded, mask


@define_v3("ImageFromBatch", "nodes_images", "image/batch",
           inputs=[Link("image", "IMAGE", {}), Int("batch_index", 0, min=0, max=4095),
                   Int("length", 1, min=1, max=4096)],
           outputs=[Output("IMAGE")])
def image_from_batch(ctx: NodeContext, image: Any, batch_index: int, length: int) -> tuple[np.ndarray]:
    """ImageFromBatch: `length` images from `batch_index`, both cut to the batch."""
    images = as_image_batch(image)
    start = min(images.shape[0] - 1, batch_index)
    return (images[start:start + min(images.shape[0] - start, length)].copy(),)


@define_v3("RepeatImageBatch", "nodes_images", "image/batch",
           inputs=[Link("image", "IMAGE", {}), Int("amount", 1, min=1, max=4096)], outputs=[Output("IMAGE")])
def repeat_image_batch(ctx: NodeContext, image: Any, amount: int) -> tuple[np.ndarray]:
    """RepeatImageBatch: the whole batch `amount` times over."""
    images = as_image_batch(image)
    ctx.check_size(images.shape[2], images.shape[1], images.shape[0] * amount)
    return (np.tile(images, (amount, 1, 1, 1)),)


@define_v3("ImageScaleToMaxDimension", "nodes_images", "image/upscaling",
           inputs=[Link("image", "IMAGE", {}), ComboV3("upscale_method", MAX_DIMENSION_METHODS),
                   Int("largest_size", 512, min=0, max=MAX_RESOLUTION, step=1)],
           outputs=[Output("IMAGE")])
def image_scale_to_max_dimension(ctx: NodeContext, image: Any, upscale_method: str,
                                 largest_size: int) -> tuple[np.ndarray]:
    """ImageScaleToMaxDimension: the longer side to `largest_size`, the other in proportion (rounded)."""
    images = as_image_batch(image)
    height, width = images.shape[1:3]
    if height > width:
        width, height = round(width / height * largest_size), largest_size
    elif width > height:
        width, height = largest_size, round(height / width * largest_size)
    else:
        width = height = largest_size
    ctx.check_size(width, height, images.shape[0])
    return (ops.resize(images, width, height, upscale_method),)
