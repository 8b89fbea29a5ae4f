"""Inpainting and instruct-pix2pix nodes: VAEEncodeForInpaint and InpaintModelConditioning (nodes.py),
InstructPixToPixConditioning (comfy_extras.nodes_ip2p) and DifferentialDiffusion
(comfy_extras.nodes_differential_diffusion), with ComfyUI's numerics.

The concat latent and mask these put into CONDITIONING reach the UNet of a 9-channel (inpainting) or
8-channel (ip2p) model through `sampling.concat`; a 4-channel model ignores them. DifferentialDiffusion is
recorded in the MODEL handle and applied by the sampler (`sampling.differential`)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from comfymesh.catalog.schema import Boolean, Float, Int, Link, Output
from comfymesh.contracts.handles import HandleKind, ModelHandle
from comfymesh.diffusion.latents import vae_codec
from comfymesh.diffusion.nodes.failures import node
from comfymesh.diffusion.nodes.handles import expect_handle
from comfymesh.diffusion.nodes.registry import nodes
from comfymesh.diffusion.nodes.vae import vae_of
from comfymesh.stage.node import NodeContext

Latent = dict[str, Any]
Conditioning = list[Any]


def pixel_mask(mask: Any, pixels: torch.Tensor) -> torch.Tensor:
    """MASK ([H, W] or [B, H, W]) as [B, 1, H, W] resized bilinearly to the image's size."""
    m = torch.as_tensor(mask).float()
    m = m.reshape(-1, 1, m.shape[-2], m.shape[-1])
    return F.interpolate(m, size=(pixels.shape[1], pixels.shape[2]), mode="bilinear")


def crop_to_factor(pixels: torch.Tensor, mask: torch.Tensor | None, factor: int,
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Image and pixel mask centre-cropped to multiples of `factor` (the VAE's own crop)."""
    h, w = (pixels.shape[1] // factor) * factor, (pixels.shape[2] // factor) * factor
    if (h, w) == tuple(pixels.shape[1:3]):
        return pixels, mask
    oy, ox = (pixels.shape[1] % factor) // 2, (pixels.shape[2] % factor) // 2
    return (pixels[:, oy:oy + h, ox:ox + w, :],
            None if mask is None else mask[:, :, oy:oy + h, ox:ox + w])


def grey_out(pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A copy of the image whose RGB is 0.5 wherever the rounded mask is 1 (what the model must fill)."""
    keep = (1.0 - mask.round()).squeeze(1)[..., None]
    out = pixels.clone()
    out[..., :3] = (out[..., :3] - 0.5) * keep + 0.5
    return out


def grow_mask(mask: torch.Tensor, grow_by: int) -> torch.Tensor:
    """The rounded mask dilated by a grow_by × grow_by box, clipped to [0, 1], at the mask's size."""
    if grow_by == 0:
        return mask
    kernel = torch.ones((1, 1, grow_by, grow_by))
    grown = F.conv2d(mask.round(), kernel, padding=math.ceil((grow_by - 1) / 2))
    return torch.clamp(grown, 0, 1)[:, :, :mask.shape[2], :mask.shape[3]]


def with_extras(conditioning: Conditioning, **values: Any) -> Conditioning:
    """Each entry of `conditioning` with `values` set among its extras (the entries themselves unchanged)."""
    return [[item[0], {**(dict(item[1]) if len(item) > 1 and item[1] else {}), **values}] for item in conditioning]


@nodes.define("VAEEncodeForInpaint", category="latent/inpaint", display_name="VAE Encode (for Inpainting)",
    inputs=[
        Link("pixels", "IMAGE"),
        Link("vae", "VAE"),
        Link("mask", "MASK"),
        Int("grow_mask_by", 6, min=0, max=64, step=1),
    ],
    outputs=[Output("LATENT")],
)
@node
def vae_encode_for_inpaint(ctx: NodeContext, pixels: Any, vae: ModelHandle, mask: Any,
                           grow_mask_by: int = 6) -> tuple[Latent]:
    module = vae_of(ctx, vae)[0]
    image = torch.as_tensor(pixels).float()
    image, m = crop_to_factor(image, pixel_mask(mask, image), vae_codec.spatial_factor(module))
    assert m is not None
    samples = vae_codec.encode(module, grey_out(image, m))
    return ({"samples": samples, "noise_mask": grow_mask(m, int(grow_mask_by)).round()},)


NOISE_MASK_TOOLTIP = ("Add a noise mask to the latent so sampling will only happen within the mask. Might improve "
                      "results or completely break things depending on the model.")


@nodes.define("InpaintModelConditioning", category="conditioning/inpaint",
    inputs=[
        Link("positive", "CONDITIONING"),
        Link("negative", "CONDITIONING"),
        Link("vae", "VAE"),
        Link("pixels", "IMAGE"),
        Link("mask", "MASK"),
        Boolean("noise_mask", True, tooltip=NOISE_MASK_TOOLTIP),
    ],
    outputs=[Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"), Output("LATENT", "latent")],
)
@node
def inpaint_model_conditioning(ctx: NodeContext, positive: Conditioning, negative: Conditioning, vae: ModelHandle,
                               pixels: Any, mask: Any, noise_mask: bool = True,
                               ) -> tuple[Conditioning, Conditioning, Latent]:
    """The masked image's latent and the mask go into both conditionings; the latent is the whole image's."""
    module = vae_of(ctx, vae)[0]
    original = torch.as_tensor(pixels).float()
    image, m = crop_to_factor(original, pixel_mask(mask, original), 8)
    assert m is not None
    concat_latent = vae_codec.encode(module, grey_out(image, m))
    latent: Latent = {"samples": vae_codec.encode(module, original)}
    if noise_mask:
        latent["noise_mask"] = m
    return (with_extras(positive, concat_latent_image=concat_latent, concat_mask=m),
            with_extras(negative, concat_latent_image=concat_latent, concat_mask=m), latent)


def _v3(name: str, module: str, **extra: Any) -> Any:
    """A V3 node of a comfy_extras module, as ComfyUI 0.8.0 declares it in `/object_info`."""
    fields = {"display_name": None, "deprecated": False, "experimental": False, "api_node": False,
              "output_matchtypes": None, **extra}
    return lambda **kw: nodes.define(name, python_module=f"comfy_extras.{module}", **{**fields, **kw})


@_v3("InstructPixToPixConditioning", "nodes_ip2p")(category="conditioning/instructpix2pix",
    inputs=[
        Link("positive", "CONDITIONING", {}),
        Link("negative", "CONDITIONING", {}),
        Link("vae", "VAE", {}),
        Link("pixels", "IMAGE", {}),
    ],
    outputs=[Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"), Output("LATENT", "latent")],
    output_tooltips=[None, None, None],
)
@node
def instruct_pix_to_pix_conditioning(ctx: NodeContext, positive: Conditioning, negative: Conditioning, pixels: Any,
                                     vae: ModelHandle) -> tuple[Conditioning, Conditioning, Latent]:
    """The image's latent goes into both conditionings; sampling starts from an all-zero latent."""
    image, _ = crop_to_factor(torch.as_tensor(pixels).float(), None, 8)
    concat_latent = vae_codec.encode(vae_of(ctx, vae)[0], image)
    return (with_extras(positive, concat_latent_image=concat_latent),
            with_extras(negative, concat_latent_image=concat_latent), {"samples": torch.zeros_like(concat_latent)})


@_v3("DifferentialDiffusion", "nodes_differential_diffusion", experimental=True)(
    display_name="Differential Diffusion", category="_for_testing",
    inputs=[
        Link("model", "MODEL", {}),
        Float("strength", 1.0, min=0.0, max=1.0, step=0.01, section="optional"),
    ],
    outputs=[Output("MODEL")],
    output_tooltips=[None],
)
@node
def differential_diffusion(ctx: NodeContext, model: ModelHandle, strength: float = 1.0) -> tuple[ModelHandle]:
    model = expect_handle(ctx, model, HandleKind.MODEL)
    return ({**model, "differential_diffusion": float(strength)},)
