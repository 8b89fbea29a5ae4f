"""Qwen-Image's nodes (comfy_extras.nodes_qwen, V3 declarations): the edit text encoders, which put the prompt in
Qwen-Image Edit's chat template with each input image read by Qwen2.5-VL's vision encoder, and give each image,
scaled to about a megapixel, to the VAE as a reference latent; and the Layered variant's empty latent, one frame
per layer plus the composite."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from comfymesh.catalog.schema import MAX_RESOLUTION, Int, Link, Output, String
from comfymesh.contracts.errors import NodeInputError
from comfymesh.contracts.handles import HandleKind, ModelHandle
from comfymesh.diffusion.families import qwen_image
from comfymesh.diffusion.models import wan_vae
from comfymesh.diffusion.models.cache import get_model_cache
from comfymesh.diffusion.nodes.failures import node
from comfymesh.diffusion.nodes.handles import checkpoint_of, expect_handle
from comfymesh.diffusion.nodes.registry import nodes
from comfymesh.diffusion.nodes.vae import vae_of
from comfymesh.diffusion.text.qwen25_vl import EDIT_PLUS_TEMPLATE, IMAGES_TEMPLATE, encode_qwen25
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


@contextmanager
def _encoders(ctx: NodeContext, clip: ModelHandle) -> Iterator[dict[str, Any]]:
    """The Qwen2.5-VL encoders, on the device and locked while the node encodes (the cache may have moved them to
    host memory after the last prompt)."""
    ckpt = checkpoint_of(ctx, expect_handle(ctx, clip, HandleKind.CLIP))
    if ckpt.family != qwen_image.NAME:
        raise NodeInputError(f"this node needs Qwen-Image's text encoder (CLIPLoader type 'qwen_image'), got a "
                             f"{ckpt.family} CLIP", node_id=ctx.node_id)
    with get_model_cache().family_text_lora(ckpt):
        yield ckpt.parts.clips


def scaled(image: torch.Tensor, pixels: int, multiple: float = 1.0) -> torch.Tensor:
    """IMAGE [B, H, W, C] area-resampled to about `pixels` in its aspect ratio (sides rounded to `multiple`), as
    ComfyUI's edit encoders scale their images."""
    samples = image.float().movedim(-1, 1)
    scale_by = math.sqrt(pixels / (samples.shape[3] * samples.shape[2]))
    width = round(samples.shape[3] * scale_by / multiple) * multiple
    height = round(samples.shape[2] * scale_by / multiple) * multiple
    return F.interpolate(samples, size=(int(height), int(width)), mode="area").movedim(1, -1)


def _reference(ctx: NodeContext, vae: ModelHandle, image: torch.Tensor) -> torch.Tensor:
    module = vae_of(ctx, vae)[0]
    if not wan_vae.is_wan_vae(module):
        raise NodeInputError("the edit encoder's VAE must be Qwen-Image's (qwen_image_vae)", node_id=ctx.node_id)
    return wan_vae.encode(module, image[..., :3])


def _with_references(conditioning: Conditioning, refs: list[torch.Tensor]) -> Conditioning:
    # conditioning_set_values(append=True): each entry's reference list extended
    return [[c, {**e, "reference_latents": [*e.get("reference_latents", []), *refs]}] for c, e in conditioning]


@_v3("TextEncodeQwenImageEdit", inputs=[
    Link("clip", "CLIP", {}), String("prompt", multiline=True, dynamicPrompts=True),
    Link("vae", "VAE", {}, section="optional"), Link("image", "IMAGE", {}, section="optional")],
    outputs=[Output("CONDITIONING")])
@node
def text_encode_qwen_image_edit(ctx: NodeContext, clip: ModelHandle, prompt: str, vae: ModelHandle | None = None,
                                image: Any = None) -> tuple[Conditioning]:
    # one image, scaled to about a megapixel, both for the vision encoder and (with a VAE) as the reference
    if image is None:
        with _encoders(ctx, clip) as encoders:
            return ([[encode_qwen25(encoders, prompt), {}]],)
    picture = scaled(torch.as_tensor(image), REFERENCE_PIXELS)[..., :3]
    with _encoders(ctx, clip) as encoders:
        conditioning = [[encode_qwen25(encoders, prompt, IMAGES_TEMPLATE, [picture]), {}]]
    if vae is not None:
        conditioning = _with_references(conditioning, [_reference(ctx, vae, picture)])
    return (conditioning,)


@_v3("TextEncodeQwenImageEditPlus", inputs=[
    Link("clip", "CLIP", {}), String("prompt", multiline=True, dynamicPrompts=True),
    Link("vae", "VAE", {}, section="optional"), Link("image1", "IMAGE", {}, section="optional"),
    Link("image2", "IMAGE", {}, section="optional"), Link("image3", "IMAGE", {}, section="optional")],
    outputs=[Output("CONDITIONING")])
@node
def text_encode_qwen_image_edit_plus(ctx: NodeContext, clip: ModelHandle, prompt: str,
                                     vae: ModelHandle | None = None, image1: Any = None, image2: Any = None,
                                     image3: Any = None) -> tuple[Conditioning]:
    # each image: about 384² for the vision encoder behind "Picture N:", about a megapixel in multiples of 8 as a
    # reference latent (with a VAE)
    images = [torch.as_tensor(i) for i in (image1, image2, image3) if i is not None]
    pictures = [scaled(image, VISION_PIXELS) for image in images]
    refs = [] if vae is None else [_reference(ctx, vae, scaled(image, REFERENCE_PIXELS, 8.0)) for image in images]
    lead = "".join(f"Picture {i + 1}: <|vision_start|><|image_pad|><|vision_end|>"
                   for i, image in enumerate((image1, image2, image3)) if image is not None)
    with _encoders(ctx, clip) as encoders:
        conditioning = [[encode_qwen25(encoders, lead + prompt, EDIT_PLUS_TEMPLATE, pictures), {}]]
    return (_with_references(conditioning, refs) if refs else conditioning,)


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
