"""Mask nodes (ComfyUI's `nodes_mask` and LoadImageMask): a MASK is float32 [B,H,W] in [0, 1].

The arithmetic follows ComfyUI's formulas on numpy arrays; growing and shrinking use scipy's grey
morphology with ComfyUI's 3x3 footprint.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.ndimage

from comfymesh.catalog.schema import MAX_RESOLUTION, Boolean, Combo, ComboV3, Float, Hidden, Int, Link, Output, Source
from comfymesh.contracts.errors import NodeInputError
from comfymesh.imaging import ops
from comfymesh.imaging.nodes import define_v3, nodes, read_input
from comfymesh.outputs import as_image_batch, preview_image
from comfymesh.stage.node import NodeContext

CHANNELS = ["red", "green", "blue", "alpha"]
COMPOSITE_OPERATIONS = ["multiply", "add", "subtract", "and", "or", "xor"]


def as_mask_batch(mask: Any) -> np.ndarray:
    """A MASK value (numpy or torch, [H,W] or [B,H,W]) as float32 numpy [B,H,W]."""
    if hasattr(mask, "detach"):  # a torch tensor; torch itself is never imported here
        mask = mask.detach().cpu().numpy()
    array = np.asarray(mask, dtype=np.float32)
    if array.ndim < 2:
        raise ValueError(f"expected a mask [B,H,W], got shape {array.shape}")
    return array.reshape((-1, *array.shape[-2:]))


def mask_as_image(mask: Any) -> np.ndarray:
    """MaskToImage's formula: each mask as the three channels of a grey image."""
    batch = as_mask_batch(mask)
    return np.repeat(batch[..., None], 3, axis=3)


def _define(name: str, inputs: list[Any], outputs: list[Output], display_name: str | None = None,
            **fields: Any) -> Any:
    return define_v3(name, "nodes_mask", "mask", inputs, outputs, display_name, **fields)


def _position(name: str, default: int = 0) -> Any:
    return Int(name, default, min=0, max=MAX_RESOLUTION, step=1)


@_define("SolidMask", [Float("value", 1.0, min=0.0, max=1.0, step=0.01),
                       Int("width", 512, min=1, max=MAX_RESOLUTION, step=1),
                       Int("height", 512, min=1, max=MAX_RESOLUTION, step=1)], [Output("MASK")])
def solid_mask(ctx: NodeContext, value: float, width: int, height: int) -> tuple[np.ndarray]:
    """SolidMask: one width x height mask of `value`."""
    ctx.check_size(width, height, 1)
    return (np.full((1, height, width), value, dtype=np.float32),)


@_define("InvertMask", [Link("mask", "MASK", {})], [Output("MASK")])
def invert_mask(ctx: NodeContext, mask: Any) -> tuple[np.ndarray]:
    """InvertMask: 1 - mask."""
    return (1.0 - as_mask_batch(mask),)


@_define("MaskToImage", [Link("mask", "MASK", {})], [Output("IMAGE")], display_name="Convert Mask to Image")
def mask_to_image(ctx: NodeContext, mask: Any) -> tuple[np.ndarray]:
    """MaskToImage: a grey RGB image per mask."""
    return (mask_as_image(mask),)


@_define("ImageToMask", [Link("image", "IMAGE", {}), ComboV3("channel", CHANNELS)], [Output("MASK")],
         display_name="Convert Image to Mask")
def image_to_mask(ctx: NodeContext, image: Any, channel: str) -> tuple[np.ndarray]:
    """ImageToMask: one channel of every image (alpha only where the image has one)."""
    images = as_image_batch(image)
    index = CHANNELS.index(channel)
    if index >= images.shape[3]:
        raise NodeInputError(f"ImageToMask: the image has no {channel} channel ({images.shape[3]} channels). "
                             "Choose red, green or blue.", node_id=ctx.node_id)
    return (images[:, :, :, index].copy(),)


@_define("ThresholdMask", [Link("mask", "MASK", {}), Float("value", 0.5, min=0.0, max=1.0, step=0.01)],
         [Output("MASK")])
def threshold_mask(ctx: NodeContext, mask: Any, value: float) -> tuple[np.ndarray]:
    """ThresholdMask: 1 where the mask is above `value`, else 0."""
    return ((as_mask_batch(mask) > value).astype(np.float32),)


@_define("GrowMask", [Link("mask", "MASK", {}),
                      Int("expand", 0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, step=1),
                      Boolean("tapered_corners", True)], [Output("MASK")], display_name="Grow Mask")
def grow_mask(ctx: NodeContext, mask: Any, expand: int, tapered_corners: bool) -> tuple[np.ndarray]:
    """GrowMask: |expand| grey dilations (or erosions, expand < 0) with a cross (tapered) or square 3x3."""
    corner = 0 if tapered_corners else 1
    footprint = np.array([[corner, 1, corner], [1, 1, 1], [corner, 1, corner]])
    step = scipy.ndimage.grey_erosion if expand < 0 else scipy.ndimage.grey_dilation
    out = []
    for frame in as_mask_batch(mask):
        for _ in range(abs(expand)):
            ctx.check_cancelled()
            frame = step(frame, footprint=footprint)
        out.append(frame)
    return (np.stack(out),)


def _feather_ramp(size: int, near: int, far: int) -> np.ndarray:
    """FeatherMask's factors along one axis: position i of the first `near` times (i+1)/near and, for
    i < far, position -i times (i+1)/far (so ComfyUI's index -0 scales the first position too)."""
    factors = np.ones(size, dtype=np.float32)
    near, far = min(near, size), min(far, size)
    for i in range(near):
        factors[i] *= np.float32((i + 1.0) / near)
    for i in range(far):
        factors[-i] *= np.float32((i + 1) / far)
    return factors


@_define("FeatherMask", [Link("mask", "MASK", {}), _position("left"), _position("top"), _position("right"),
                         _position("bottom")], [Output("MASK")])
def feather_mask(ctx: NodeContext, mask: Any, left: int, top: int, right: int, bottom: int) -> tuple[np.ndarray]:
    """FeatherMask: linear ramps from each named edge inwards."""
    batch = as_mask_batch(mask)
    columns = _feather_ramp(batch.shape[2], left, right)
    rows = _feather_ramp(batch.shape[1], top, bottom)
    return (batch * columns[None, None, :] * rows[None, :, None],)


@_define("MaskComposite", [Link("destination", "MASK", {}), Link("source", "MASK", {}), _position("x"),
                           _position("y"), ComboV3("operation", COMPOSITE_OPERATIONS)], [Output("MASK")])
def mask_composite(ctx: NodeContext, destination: Any, source: Any, x: int, y: int,
                   operation: str) -> tuple[np.ndarray]:
    """MaskComposite: `source` combined into `destination` at (x, y), clipped to [0, 1]."""
    output = as_mask_batch(destination).copy()
    src = as_mask_batch(source)
    if src.shape[0] not in (1, output.shape[0]):
        raise NodeInputError(f"MaskComposite: a batch of {src.shape[0]} source masks cannot go into "
                             f"{output.shape[0]} destination masks. Give one source mask or as many as "
                             "destinations.", node_id=ctx.node_id)
    bottom, right = min(y + src.shape[1], output.shape[1]), min(x + src.shape[2], output.shape[2])
    if bottom > y and right > x:
        dst_part = output[:, y:bottom, x:right]
        src_part = src[:, :bottom - y, :right - x]
        if operation == "multiply":
            combined = dst_part * src_part
        elif operation == "add":
            combined = dst_part + src_part
        elif operation == "subtract":
            combined = dst_part - src_part
        else:  # the logic operations act on the masks rounded to 0 or 1
            logic = {"and": np.logical_and, "or": np.logical_or, "xor": np.logical_xor}[operation]
            combined = logic(np.round(dst_part) != 0, np.round(src_part) != 0).astype(np.float32)
        output[:, y:bottom, x:right] = combined
    return (np.clip(output, 0.0, 1.0),)


@nodes.define("LoadImageMask", category="mask", display_name="Load Image (as Mask)",
    inputs=[
        Combo("image", Source("input/images"), image_upload=True),
        Combo("channel", ["alpha", "red", "green", "blue"]),
    ],
    outputs=[Output("MASK")],
)
def load_image_mask(ctx: NodeContext, image: str, channel: str) -> tuple[np.ndarray]:
    """LoadImageMask: one channel of the file's first frame; alpha is inverted (1 - a, 0 without alpha)."""
    data = read_input(ctx, image)
    try:
        ctx.check_size(*ops.image_extent(data)[:2], 1)
        pixels, alpha = ops.decode_image(data)
    except ops.UnreadableImage as exc:
        raise NodeInputError(f"Cannot load {image}: {exc}. Upload it again or choose another file.",
                             node_id=ctx.node_id) from exc
    if channel == "alpha":
        mask = np.zeros(pixels.shape[1:3], np.float32) if alpha is None else 1.0 - alpha[0]
    else:
        mask = pixels[0, :, :, ["red", "green", "blue"].index(channel)]
    return (mask[None].astype(np.float32),)


@_define("MaskPreview", [Link("mask", "MASK", {}), Hidden("prompt", "PROMPT", v3=True),
                         Hidden("extra_pnginfo", "EXTRA_PNGINFO", v3=True)], [], display_name="Preview Mask",
         description="Saves the input images to your ComfyUI output directory.", output_node=True)
def mask_preview(ctx: NodeContext, mask: Any) -> tuple[()]:
    """MaskPreview: the mask as a grey image, saved as PreviewImage saves (temp/, random prefix)."""
    return preview_image(ctx, mask_as_image(mask))
