"""Qwen-Image's nodes (comfy_extras.nodes_qwen, V3 declarations): the edit text encoders, which put the prompt in
Qwen-Image Edit's chat template and give each input image, scaled to about a megapixel, to the VAE as a reference
latent; and the Layered variant's empty latent, one frame per layer plus the composite."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from comfymesh.catalog.schema import MAX_RESOLUTION, Int, Link, Output, String
from comfymesh.contracts.errors import NodeInputError
from comfymesh.contracts.handles import HandleKind, ModelHandle
from comfymesh.diffusion.families import qwen_image
from comfymesh.diffusion.nodes.failures import node
from comfymesh.diffusion.nodes.handles import checkpoint_of, expect_handle
from comfymesh.diffusion.nodes.registry import nodes
from comfymesh.diffusion.text.qwen25_vl import EDIT_PLUS_TEMPLATE, encode_qwen25
from comfymesh.stage.node import NodeContext

MODULE = "comfy_extras.nodes_qwen"
CATEGORY = "advanced/conditioning"
REFERENCE_PIXELS = 1024 * 1024  # the reference latents' area
VISION_PIXELS = 384 * 384  # Edit Plus: the area each image has for the vision encoder
Conditioning = list[Any]


def _v3(name: str, inputs: list[Any], outputs: list[Output], *, category: str = CATEGORY,
        display_name: str | None = None) -> Any:
    return nodes.define(name, category=category, display_name=display_name, description="", python_module=MODULE,
                        inputs=inputs, outputs=outputs, deprecated=False, experimental=False, api_node=False,
                        output_matchtypes=None, output_tooltips=[None])


def _encoder(ctx: NodeContext, clip: ModelHandle) -> Any:
    ckpt = checkpoint_of(ctx, expect_handle(ctx, clip, HandleKind.CLIP))
    if ckpt.family != qwen_image.NAME:
        raise NodeInputError(f"this node needs Qwen-Image's text encoder (CLIPLoader type 'qwen_image'), got a "
                             f"{ckpt.family} CLIP", node_id=ctx.node_id)
    return ckpt.parts.clips["qwen25_7b"]


def scaled(image: torch.Tensor, pixels: int, multiple: float = 1.0) -> torch.Tensor:
    """IMAGE [B, H, W, C] area-resampled to about `pixels` in its aspect ratio (sides rounded to `multiple`), as
    ComfyUI's edit encoders scale their images."""
    samples = image.float().movedim(-1, 1)
    scale_by = math.sqrt(pixels / (samples.shape[3] * samples.shape[2]))
    width = round(samples.shape[3] * scale_by / multiple) * multiple
    height = round(samples.shape[2] * scale_by / multiple) * multiple
    return F.interpolate(samples, size=(int(height), int(width)), mode="area").movedim(1, -1)


def _no_vision(ctx: NodeContext) -> NodeInputError:
    return NodeInputError("Qwen-Image Edit's image inputs go through Qwen2.5-VL's vision encoder, which this stage "
                          "does not run yet (issue 16): leave the image inputs empty and give the image as a "
                          "ReferenceLatent (VAEEncode) instead", node_id=ctx.node_id)


@_v3("TextEncodeQwenImageEdit", inputs=[
    Link("clip", "CLIP", {}), String("prompt", multiline=True, dynamicPrompts=True),
    Link("vae", "VAE", {}, section="optional"), Link("image", "IMAGE", {}, section="optional")],
    outputs=[Output("CONDITIONING")])
@node
def text_encode_qwen_image_edit(ctx: NodeContext, clip: ModelHandle, prompt: str, vae: ModelHandle | None = None,
                                image: Any = None) -> tuple[Conditioning]:
    encoder = _encoder(ctx, clip)
    if image is not None:
        raise _no_vision(ctx)
    return ([[encode_qwen25(encoder, prompt), {}]],)


@_v3("TextEncodeQwenImageEditPlus", inputs=[
    Link("clip", "CLIP", {}), String("prompt", multiline=True, dynamicPrompts=True),
    Link("vae", "VAE", {}, section="optional"), Link("image1", "IMAGE", {}, section="optional"),
    Link("image2", "IMAGE", {}, section="optional"), Link("image3", "IMAGE", {}, section="optional")],
    outputs=[Output("CONDITIONING")])
@node
def text_encode_qwen_image_edit_plus(ctx: NodeContext, clip: ModelHandle, prompt: str,
                                     vae: ModelHandle | None = None, image1: Any = None, image2: Any = None,
                                     image3: Any = None) -> tuple[Conditioning]:
    encoder = _encoder(ctx, clip)
    images = [torch.as_tensor(i) for i in (image1, image2, image3) if i is not None]
    if images:
        raise _no_vision(ctx)
    return ([[encode_qwen25(encoder, prompt, EDIT_PLUS_TEMPLATE), {}]],)


@_v3("EmptyQwenImageLayeredLatentImage", category="latent/qwen", display_name="Empty Qwen Image Layered Latent",
     inputs=[Int("width", 640, min=16, max=MAX_RESOLUTION, step=16), Int("height", 640, min=16, max=MAX_RESOLUTION,
                                                                          step=16),
             Int("layers", 3, min=0, max=MAX_RESOLUTION, step=1), Int("batch_size", 1, min=1, max=4096)],
     outputs=[Output("LATENT")])
@node
def empty_qwen_image_layered_latent(ctx: NodeContext, width: int, height: int, layers: int,
                                    batch_size: int = 1) -> tuple[dict[str, Any]]:
    # frames: the composite and one per layer
    return ({"samples": torch.zeros([batch_size, 16, layers + 1, height // 8, width // 8], dtype=torch.float32)},)
