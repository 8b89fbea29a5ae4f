"""The imaging stage's nodes: each declared (inputs, outputs, category) beside the function that runs it.

Inputs follow /object_info (comfyui-api.md §8.4); the pixel work is in `ops` (ImageMagick).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from comfymesh.catalog.files import FileRefused, open_inside, split_image_name
from comfymesh.catalog.schema import Combo, Float, Input, Int, Link, NodeSet, Output, Source
from comfymesh.contracts.errors import NodeInputError
from comfymesh.files import BadKey, safe_key
from comfymesh.imaging import ops
from comfymesh.outputs import as_image_batch
from comfymesh.stage.node import NodeContext

nodes = NodeSet("imaging")
NodeFn = TypeVar("NodeFn", bound=Callable[..., Any])


def define_v3(name: str, module: str, category: str, inputs: list[Input], outputs: list[Output],
              display_name: str | None = None, **fields: Any) -> Callable[[NodeFn], NodeFn]:
    """Declare a node ComfyUI 0.8.0 declares as a V3 node of `comfy_extras.<module>` (its extra fields)."""
    return nodes.define(name, category=category, display_name=display_name, python_module=f"comfy_extras.{module}",
                        inputs=inputs, outputs=outputs, deprecated=False, experimental=False, api_node=False,
                        output_matchtypes=None, output_tooltips=[None] * len(outputs), **fields)


def read_input(ctx: NodeContext, image: str) -> bytes:
    """The bytes of the file LoadImage's `name`, `sub/name` or `name [output|input|temp]` names."""
    folder, name = split_image_name(image)
    if ctx.files is not None and not ctx.files.local:  # a shared store: the object, by its checked key
        try:
            return ctx.files.read(safe_key(folder, "", name))
        except BadKey:
            raise NodeInputError(f"Cannot load {folder}/{name}: the path leaves its folder. Name a file inside "
                                 f"the {folder} folder.", node_id=ctx.node_id) from None
        except FileNotFoundError:
            raise NodeInputError(f"Invalid image file: {image}", node_id=ctx.node_id) from None
    try:
        with open_inside(ctx.home / folder, name) as handle:
            return handle.read()
    except FileNotFoundError:
        raise NodeInputError(f"Invalid image file: {image}", node_id=ctx.node_id) from None
    except FileRefused as exc:
        raise NodeInputError(f"Cannot load {folder}/{name}: {exc}. Name a file inside the {folder} folder.",
                             node_id=ctx.node_id) from None


@nodes.define("LoadImage", category="image", display_name="Load Image",
    inputs=[
        Combo("image", Source("input/images"), image_upload=True),
    ],
    outputs=[Output("IMAGE"), Output("MASK")],
)
def load_image(ctx: NodeContext, image: str) -> tuple[np.ndarray, np.ndarray]:
    """LoadImage: IMAGE [B,H,W,3] and MASK = 1 - alpha, or a 64x64 zero mask without alpha.

    The header is read first: a file whose frames would be over the per-node limits is never decoded.
    """
    data = read_input(ctx, image)
    try:
        ctx.check_size(*ops.image_extent(data))
        pixels, alpha = ops.decode_image(data)
    except ops.UnreadableImage as exc:
        raise NodeInputError(f"Cannot load {image}: {exc}. Upload it again or choose another file.",
                             node_id=ctx.node_id) from exc
    if alpha is None:
        mask = np.zeros((pixels.shape[0], 64, 64), dtype=np.float32)
    else:
        mask = (1.0 - alpha).astype(np.float32)
    return pixels, mask


def upscale(images: np.ndarray, method: str, width: int, height: int, crop: str) -> np.ndarray:
    """ComfyUI's common upscale for images: optional centre crop to the target aspect, then resize."""
    if method not in ops.RESIZE_FILTERS:
        raise NodeInputError(f"Unknown upscale_method {method!r}")
    if crop == "center":
        x, y, w, h = ops.center_crop_box(images.shape[2], images.shape[1], width, height)
        if (w, h) != (images.shape[2], images.shape[1]):
            images = ops.crop(images, x, y, w, h)
    return ops.resize(images, width, height, method)


@nodes.define("ImageScale", category="image/upscaling", display_name="Upscale Image",
    inputs=[
        Link("image", "IMAGE"),
        Combo("upscale_method", ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]),
        Int("width", 512, min=0, max=16384, step=1),
        Int("height", 512, min=0, max=16384, step=1),
        Combo("crop", ["disabled", "center"]),
    ],
    outputs=[Output("IMAGE")],
)
def image_scale(ctx: NodeContext, image: Any, upscale_method: str, width: int, height: int,
                crop: str) -> tuple[np.ndarray]:
    """ImageScale: to width x height; a 0 side keeps the aspect ratio, both 0 leaves the image as is."""
    images = as_image_batch(image)
    if width == 0 and height == 0:
        return (images,)
    if width == 0:
        width = max(1, round(images.shape[2] * height / images.shape[1]))
    elif height == 0:
        height = max(1, round(images.shape[1] * width / images.shape[2]))
    ctx.check_size(width, height, images.shape[0])
    return (upscale(images, upscale_method, width, height, crop),)


@nodes.define("ImageScaleBy", category="image/upscaling", display_name="Upscale Image By",
    inputs=[
        Link("image", "IMAGE"),
        Combo("upscale_method", ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]),
        Float("scale_by", 1.0, min=0.01, max=8.0, step=0.01),
    ],
    outputs=[Output("IMAGE")],
)
def image_scale_by(ctx: NodeContext, image: Any, upscale_method: str, scale_by: float) -> tuple[np.ndarray]:
    """ImageScaleBy: both sides times `scale_by`, rounded."""
    images = as_image_batch(image)
    width = max(1, round(images.shape[2] * scale_by))
    height = max(1, round(images.shape[1] * scale_by))
    ctx.check_size(width, height, images.shape[0])
    return (upscale(images, upscale_method, width, height, "disabled"),)


@nodes.define("ImageInvert", category="image", display_name="Invert Image",
    inputs=[
        Link("image", "IMAGE"),
    ],
    outputs=[Output("IMAGE")],
)
def image_invert(ctx: NodeContext, image: Any) -> tuple[np.ndarray]:
    """ImageInvert: 1 - x."""
    return (ops.invert(as_image_batch(image)),)


@nodes.define("ImageBlur", category="image/postprocessing", display_name=None, python_module="comfy_extras.nodes_post_processing", deprecated=False, experimental=False, api_node=False, output_matchtypes=None, output_tooltips=[None],
    inputs=[
        Link("image", "IMAGE", {}),
        Int("blur_radius", 1, min=1, max=31, step=1),
        Float("sigma", 1.0, min=0.1, max=10.0, step=0.1),
    ],
    outputs=[Output("IMAGE")],
)
def image_blur(ctx: NodeContext, image: Any, blur_radius: int, sigma: float) -> tuple[np.ndarray]:
    """ImageBlur: ComfyUI's kernel spans linspace(-1, 1) over 2r+1 taps, so its sigma is sigma·r pixels."""
    images = as_image_batch(image)
    if blur_radius == 0:
        return (images,)
    return (ops.gaussian_blur(images, blur_radius, sigma * blur_radius),)


@nodes.define("ImageSharpen", category="image/postprocessing", display_name=None, python_module="comfy_extras.nodes_post_processing", deprecated=False, experimental=False, api_node=False, output_matchtypes=None, output_tooltips=[None],
    inputs=[
        Link("image", "IMAGE", {}),
        Int("sharpen_radius", 1, min=1, max=31, step=1),
        Float("sigma", 1.0, min=0.1, max=10.0, step=0.01),
        Float("alpha", 1.0, min=0.0, max=5.0, step=0.01),
    ],
    outputs=[Output("IMAGE")],
)
def image_sharpen(ctx: NodeContext, image: Any, sharpen_radius: int, sigma: float,
                  alpha: float) -> tuple[np.ndarray]:
    """ImageSharpen: convolve with ComfyUI's sharpening kernel, clamped to [0, 1]."""
    images = as_image_batch(image)
    if sharpen_radius == 0:
        return (images,)
    return (ops.convolve(images, ops.sharpen_kernel(sharpen_radius, sigma, alpha)),)


@nodes.define("ImageCrop", category="image/transform", display_name="Image Crop", python_module="comfy_extras.nodes_images", deprecated=False, experimental=False, api_node=False, output_matchtypes=None, output_tooltips=[None],
    inputs=[
        Link("image", "IMAGE", {}),
        Int("width", 512, min=1, max=16384, step=1),
        Int("height", 512, min=1, max=16384, step=1),
        Int("x", 0, min=0, max=16384, step=1),
        Int("y", 0, min=0, max=16384, step=1),
    ],
    outputs=[Output("IMAGE")],
)
def image_crop(ctx: NodeContext, image: Any, width: int, height: int, x: int, y: int) -> tuple[np.ndarray]:
    """ImageCrop: x/y clamped into the image and the box cut at its edges, as ComfyUI does."""
    images = as_image_batch(image)
    _, image_height, image_width, _ = images.shape
    x = min(x, image_width - 1)
    y = min(y, image_height - 1)
    width = min(width, image_width - x)
    height = min(height, image_height - y)
    return (ops.crop(images, x, y, width, height),)


@nodes.define("ImageBatch", category="image", display_name="Batch Images", deprecated=True,
    inputs=[
        Link("image1", "IMAGE"),
        Link("image2", "IMAGE"),
    ],
    outputs=[Output("IMAGE")],
)
def image_batch(ctx: NodeContext, image1: Any, image2: Any) -> tuple[np.ndarray]:
    """ImageBatch: image2 after image1, first scaled (bilinear, centre crop) to image1's size."""
    first, second = as_image_batch(image1), as_image_batch(image2)
    if first.shape[3] != second.shape[3]:
        raise NodeInputError(
            f"Cannot batch images with {first.shape[3]} and {second.shape[3]} channels", node_id=ctx.node_id)
    ctx.check_size(first.shape[2], first.shape[1], first.shape[0] + second.shape[0])
    if first.shape[1:3] != second.shape[1:3]:
        second = upscale(second, "bilinear", first.shape[2], first.shape[1], "center")
    return (np.concatenate([first, second]),)


@nodes.define("EmptyImage", category="image",
    inputs=[
        Int("width", 512, min=1, max=16384, step=1),
        Int("height", 512, min=1, max=16384, step=1),
        Int("batch_size", 1, min=1, max=4096),
        Int("color", 0, min=0, max=16777215, step=1, display="color"),
    ],
    outputs=[Output("IMAGE")],
)
def empty_image(ctx: NodeContext, width: int, height: int, batch_size: int = 1,
                color: int = 0) -> tuple[np.ndarray]:
    """EmptyImage: a batch filled with 0xRRGGBB (each channel as byte/255, like ComfyUI)."""
    ctx.check_size(width, height, batch_size)
    # Divide in float64, then round once to float32, as ComfyUI's Python floats do.
    rgb = (np.array([(color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF]) / 255.0).astype(np.float32)
    return (np.broadcast_to(rgb, (batch_size, height, width, 3)).copy(),)


# The stage's other node groups declare into `nodes` as they are imported (each imports `nodes` from here).
from comfymesh.imaging import (  # noqa: E402, F401
    filter_nodes,
    flux_nodes,
    image_nodes,
    mask_nodes,
    primitive_nodes,
    resize_nodes,
    size_nodes,
    string_nodes,
)
