"""ComfyUI 0.8.0's generic resize and batch nodes with V3 dynamic inputs (ResizeImageMaskNode, BatchImagesNode)
and LoadImageOutput (an output-folder image, its list read by the frontend from /internal/files/output).

Sizes follow `comfy_extras/nodes_post_processing.py`'s formulas (Python's round, as there); the pixels go
through the same ImageMagick resize as ImageScale.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from comfymesh.catalog.schema import (
    MAX_RESOLUTION,
    Autogrow,
    ComboV3,
    DynamicCombo,
    Float,
    Int,
    Link,
    Output,
    RemoteCombo,
)
from comfymesh.contracts.errors import NodeInputError
from comfymesh.imaging.nodes import define_v3, load_image, nodes, upscale
from comfymesh.outputs import as_image_batch
from comfymesh.stage.node import NodeContext

SCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
CROP_METHODS = ["disabled", "center"]


def _size(name: str) -> Any:
    return Int(name, 512, min=0, max=MAX_RESOLUTION, step=1)


def _crop() -> Any:
    return ComboV3("crop", CROP_METHODS, default="center")


RESIZE_TYPES = {
    "scale by multiplier": [Float("multiplier", 1.0, min=0.01, max=8.0, step=0.01)],
    "scale dimensions": [_size("width"), _size("height"), _crop()],
    "scale longer dimension": [_size("longer_size")],
    "scale shorter dimension": [_size("shorter_size")],
    "scale width": [_size("width")],
    "scale height": [_size("height")],
    "scale total pixels": [Float("megapixels", 1.0, min=0.01, max=16.0, step=0.01)],
    "match size": [Link("match", "IMAGE,MASK", {}), _crop()],
}


def _as_frames(value: Any) -> tuple[np.ndarray, bool]:
    """An IMAGE [B,H,W,C] or a MASK [B,H,W] as float32 [B,H,W,C], and whether it was an image (ComfyUI
    tells them apart by their number of dimensions)."""
    if hasattr(value, "detach"):  # a torch tensor; torch itself is never imported here
        value = value.detach().cpu().numpy()
    array = np.asarray(value, dtype=np.float32)
    if array.ndim == 4:
        return array, True
    if array.ndim in (2, 3):
        return array.reshape((-1, *array.shape[-2:]))[..., None], False
    raise NodeInputError(f"expected an image [B,H,W,C] or a mask [B,H,W], got shape {array.shape}")


def resize_target(kind: str, width: int, height: int, values: Mapping[str, Any],
                  match: tuple[int, int] | None = None) -> tuple[int, int] | None:
    """The (width, height) ResizeImageMaskNode scales a `width` x `height` frame to; None keeps it as is."""
    if kind == "scale by multiplier":
        return round(width * values["multiplier"]), round(height * values["multiplier"])
    if kind in ("scale dimensions", "scale width", "scale height"):
        target_w = values["width"] if kind != "scale height" else 0
        target_h = values["height"] if kind != "scale width" else 0
        if target_w == 0 and target_h == 0:
            return None
        if target_w == 0:
            target_w = max(1, round(width * target_h / height))
        elif target_h == 0:
            target_h = max(1, round(height * target_w / width))
        return target_w, target_h
    if kind == "scale longer dimension":
        size = values["longer_size"]
        if height > width:
            return round(width / height * size), size
        if width > height:
            return size, round(height / width * size)
        return size, size
    if kind == "scale shorter dimension":
        size = values["shorter_size"]
        # as 0.8.0 writes it: only a landscape frame keeps its aspect; portrait and square become size x size
        if height < width:
            return round(width / height * size), size
        return size, size
    if kind == "scale total pixels":
        scale = math.sqrt(int(values["megapixels"] * 1024 * 1024) / (width * height))
        return round(width * scale), round(height * scale)
    if kind == "match size" and match is not None:
        return match
    raise NodeInputError(f"Unsupported resize type: {kind}")


@nodes.define("ResizeImageMaskNode", category="transform", display_name="Resize Image/Mask",
              python_module="comfy_extras.nodes_post_processing",
              inputs=[Link("input", "COMFY_MATCHTYPE_V3",
                           {"template": {"template_id": "input_type", "allowed_types": "IMAGE,MASK"}}),
                      DynamicCombo("resize_type", RESIZE_TYPES),
                      ComboV3("scale_method", SCALE_METHODS, default="area")],
              outputs=[Output("COMFY_MATCHTYPE_V3", "resized")],
              output_tooltips=[None], output_matchtypes=["input_type"], deprecated=False, experimental=False,
              api_node=False)
def resize_image_mask(ctx: NodeContext, input: Any, resize_type: str, scale_method: str,
                      **options: Any) -> tuple[np.ndarray]:
    """ResizeImageMaskNode: an image or a mask resized as the chosen `resize_type` says (its inputs arrive as
    `resize_type.<name>`); a mask comes back as a mask."""
    frames, is_image = _as_frames(input)
    values = {name.split(".", 1)[1]: value for name, value in options.items() if name.startswith("resize_type.")}
    match = None
    if resize_type == "match size":
        if values.get("match") is None:
            raise NodeInputError("resize_type 'match size' needs its match input", node_id=ctx.node_id)
        reference, _ = _as_frames(values["match"])
        match = (reference.shape[2], reference.shape[1])
    target = resize_target(resize_type, frames.shape[2], frames.shape[1], values, match)
    if target is not None:
        if min(target) < 1:
            raise NodeInputError(f"resize_type {resize_type!r} gives a {target[0]}x{target[1]} size",
                                 node_id=ctx.node_id)
        ctx.check_size(target[0], target[1], frames.shape[0])
        # crop only where ComfyUI passes it: scale dimensions and match size
        crop = values.get("crop", "disabled") if resize_type in ("scale dimensions", "match size") else "disabled"
        frames = upscale(frames, scale_method, target[0], target[1], crop)
    return (frames if is_image else frames[..., 0],)


def batch_images(images: list[np.ndarray]) -> np.ndarray:
    """BatchImagesNode's formula: a missing alpha channel added as 1.0, every image resized (bilinear,
    centre crop) to the first one's size, all in one batch."""
    channels = max(image.shape[-1] for image in images)
    padded = [np.concatenate([image, np.ones((*image.shape[:3], 1), np.float32)], axis=3)
              if image.shape[-1] < channels else image for image in images]
    first = padded[0].shape
    return np.concatenate([image if image.shape[1:] == first[1:]
                           else upscale(image, "bilinear", first[2], first[1], "center") for image in padded])


@define_v3("BatchImagesNode", "nodes_post_processing", "image", display_name="Batch Images",
           inputs=[Autogrow("images", Link("image", "IMAGE", {}), prefix="image", least=2, most=50)],
           outputs=[Output("IMAGE")])
def batch_images_node(ctx: NodeContext, **images: Any) -> tuple[np.ndarray]:
    """BatchImagesNode: the prompt's `images.image0`, `images.image1`, ... in slot order, as one batch."""
    slots = sorted((int(name.rsplit("image", 1)[1]), value) for name, value in images.items()
                   if name.startswith("images.image") and name.rsplit("image", 1)[1].isdigit())
    if not slots:
        raise NodeInputError("BatchImagesNode needs at least one image", node_id=ctx.node_id)
    batch = [as_image_batch(value) for _, value in slots]
    ctx.check_size(batch[0].shape[2], batch[0].shape[1], sum(image.shape[0] for image in batch))
    return (batch_images(batch),)


@nodes.define("LoadImageOutput", category="image", display_name="Load Image (from Outputs)",
              description="Load an image from the output folder. When the refresh button is clicked, the node will "
                          "update the image list and automatically select the first image, allowing for easy "
                          "iteration.",
              inputs=[RemoteCombo("image", "/internal/files/output", image_upload=True, image_folder="output",
                                  remote={"refresh_button": True, "control_after_refresh": "first"})],
              # the file behind a name can change between runs (ComfyUI hashes it): never served from cache
              outputs=[Output("IMAGE"), Output("MASK")], experimental=True, always_changed=True)
def load_image_output(ctx: NodeContext, image: str) -> tuple[np.ndarray, np.ndarray]:
    """LoadImageOutput: LoadImage's decoding; the frontend names files as `name.png [output]`."""
    return load_image(ctx, image)
