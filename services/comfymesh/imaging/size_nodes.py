"""Image-size nodes (ComfyUI's GetImageSize, ImageScaleToTotalPixels and ImageStitch) on IMAGE batches;
resizing goes through ImageMagick (`ops.resize`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from comfymesh.catalog.schema import Boolean, ComboV3, Float, Hidden, Int, Link, Output
from comfymesh.contracts.errors import NodeInputError
from comfymesh.imaging import ops
from comfymesh.imaging.nodes import define_v3
from comfymesh.outputs import as_image_batch
from comfymesh.stage.node import NodeContext

UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
STITCH_DIRECTIONS = ["right", "down", "left", "up"]
# ImageStitch's spacing colours: a grey level for every colour channel, or an RGB triple
SPACING_COLORS: dict[str, float | tuple[float, float, float]] = {
    "white": 1.0, "black": 0.0, "red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}


@define_v3("GetImageSize", "nodes_images", "image", display_name="Get Image Size",
           description="Returns width and height of the image, and passes it through unchanged.",
           inputs=[Link("image", "IMAGE", {}), Hidden("unique_id", "UNIQUE_ID", v3=True)],
           outputs=[Output("INT", "width"), Output("INT", "height"), Output("INT", "batch_size")])
def get_image_size(ctx: NodeContext, image: Any) -> tuple[int, int, int]:
    """GetImageSize: (width, height, batch size)."""
    batch, height, width = as_image_batch(image).shape[:3]
    return width, height, batch


def total_pixels_size(width: int, height: int, megapixels: float, steps: int) -> tuple[int, int]:
    """ImageScaleToTotalPixels' size: both sides scaled to megapixels·1024² pixels in all, each rounded to a
    multiple of `steps` (Python's round, half to even)."""
    scale = math.sqrt(megapixels * 1024 * 1024 / (width * height))
    return round(width * scale / steps) * steps, round(height * scale / steps) * steps


@define_v3("ImageScaleToTotalPixels", "nodes_post_processing", "image/upscaling",
           inputs=[Link("image", "IMAGE", {}), ComboV3("upscale_method", UPSCALE_METHODS),
                   Float("megapixels", 1.0, min=0.01, max=16.0, step=0.01),
                   Int("resolution_steps", 1, min=1, max=256)],
           outputs=[Output("IMAGE")])
def image_scale_to_total_pixels(ctx: NodeContext, image: Any, upscale_method: str, megapixels: float,
                                resolution_steps: int) -> tuple[np.ndarray]:
    """ImageScaleToTotalPixels: the image at about `megapixels`, its aspect ratio kept."""
    images = as_image_batch(image)
    width, height = total_pixels_size(images.shape[2], images.shape[1], megapixels, resolution_steps)
    if width < 1 or height < 1:
        raise NodeInputError(f"ImageScaleToTotalPixels: {megapixels} megapixels in steps of {resolution_steps} "
                             f"gives a {width}x{height} image. Raise megapixels or lower resolution_steps.",
                             node_id=ctx.node_id)
    ctx.check_size(width, height, images.shape[0])
    return (ops.resize(images, width, height, upscale_method),)


def _extend_batch(images: np.ndarray, size: int) -> np.ndarray:
    """The batch made `size` long by repeating its last image."""
    if images.shape[0] >= size:
        return images
    return np.concatenate([images, np.repeat(images[-1:], size - images.shape[0], axis=0)])


def _pad_centered(images: np.ndarray, axis: int, size: int, value: float) -> np.ndarray:
    """Pad `axis` (1 rows, 2 columns) to `size`, the smaller half before, with `value` in every channel."""
    missing = size - images.shape[axis]
    if missing <= 0:
        return images
    widths = [(0, 0)] * 4
    widths[axis] = (missing // 2, missing - missing // 2)
    return np.pad(images, widths, constant_values=value)


def _add_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """Channels of 1.0 (an opaque alpha) added up to `channels`."""
    if images.shape[3] >= channels:
        return images
    ones = np.ones((*images.shape[:3], channels - images.shape[3]), np.float32)
    return np.concatenate([images, ones], axis=3)


def _spacing(shape: tuple[int, int, int, int], color: float | tuple[float, float, float]) -> np.ndarray:
    """ImageStitch's spacer: the colour in the colour channels, an alpha channel (4th) opaque."""
    spacer = np.zeros(shape, np.float32)
    if isinstance(color, tuple):
        for index, value in enumerate(color[:shape[3]]):
            spacer[..., index] = value
    else:
        spacer[..., :min(3, shape[3])] = color
    if shape[3] == 4:
        spacer[..., 3] = 1.0
    return spacer


@define_v3("ImageStitch", "nodes_images", "image/transform", display_name="Image Stitch",
           description="Stitches image2 to image1 in the specified direction.\nIf image2 is not provided, returns "
                       "image1 unchanged.\nOptional spacing can be added between images.",
           inputs=[Link("image1", "IMAGE", {}), ComboV3("direction", STITCH_DIRECTIONS, default="right"),
                   Boolean("match_image_size", True), Int("spacing_width", 0, min=0, max=1024, step=2),
                   ComboV3("spacing_color", list(SPACING_COLORS), default="white"),
                   Link("image2", "IMAGE", {}, section="optional")],
           outputs=[Output("IMAGE")])
def image_stitch(ctx: NodeContext, image1: Any, direction: str, match_image_size: bool, spacing_width: int,
                 spacing_color: str, image2: Any = None) -> tuple[np.ndarray]:
    """ImageStitch: image2 beside (right/left) or above/below (down/up) image1, optionally scaled (lanczos) to
    image1's height or width, else the smaller centred on padding; batches evened by repeating the last image."""
    first = as_image_batch(image1)
    if image2 is None:
        return (first,)
    second = as_image_batch(image2)
    batch = max(first.shape[0], second.shape[0])
    first, second = _extend_batch(first, batch), _extend_batch(second, batch)
    horizontal = direction in ("left", "right")
    color = SPACING_COLORS[spacing_color]
    if match_image_size:
        aspect = second.shape[2] / second.shape[1]
        if horizontal:
            width, height = int(first.shape[1] * aspect), first.shape[1]
        else:
            width, height = first.shape[2], int(first.shape[2] / aspect)
        ctx.check_size(width, height, batch)
        second = ops.resize(second, width, height, "lanczos")
    else:
        axis = 1 if horizontal else 2
        size = max(first.shape[axis], second.shape[axis])
        pad_value = 0.0 if isinstance(color, tuple) else color
        first, second = _pad_centered(first, axis, size, pad_value), _pad_centered(second, axis, size, pad_value)
    channels = max(first.shape[3], second.shape[3])
    first, second = _add_channels(first, channels), _add_channels(second, channels)
    parts = [second, first] if direction in ("left", "up") else [first, second]
    spacing_width += spacing_width % 2
    if spacing_width > 0:
        if horizontal:
            shape = (batch, max(first.shape[1], second.shape[1]), spacing_width, channels)
        else:
            shape = (batch, spacing_width, max(first.shape[2], second.shape[2]), channels)
        parts.insert(1, _spacing(shape, color))
    axis = 2 if horizontal else 1
    out_height = parts[0].shape[1] if horizontal else sum(part.shape[1] for part in parts)
    out_width = sum(part.shape[2] for part in parts) if horizontal else parts[0].shape[2]
    ctx.check_size(out_width, out_height, batch)
    return (np.concatenate(parts, axis=axis),)

