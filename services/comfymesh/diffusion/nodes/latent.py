"""Latent nodes: empty latents and latent upscaling."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from comfymesh.catalog.schema import Combo, Float, Int, Link, Output
from comfymesh.contracts.errors import NodeInputError
from comfymesh.diffusion.nodes.failures import node
from comfymesh.diffusion.nodes.registry import nodes
from comfymesh.stage.node import NodeContext

LATENT_UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")


@nodes.define("EmptyLatentImage", category="latent", display_name="Empty Latent Image",
    description="Create a new batch of empty latent images to be denoised via sampling.",
    inputs=[
        Int("width", 512, min=16, max=16384, step=8, tooltip="The width of the latent images in pixels."),
        Int("height", 512, min=16, max=16384, step=8, tooltip="The height of the latent images in pixels."),
        Int("batch_size", 1, min=1, max=4096, tooltip="The number of latent images in the batch."),
    ],
    outputs=[Output("LATENT")],
    output_tooltips=["The empty latent image batch."],
)
@node
def empty_latent_image(ctx: NodeContext, width: int, height: int, batch_size: int = 1) -> tuple[dict[str, Any]]:
    return ({"samples": torch.zeros([batch_size, 4, height // 8, width // 8], dtype=torch.float32)},)


def _upscale(samples: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    if method not in LATENT_UPSCALE_METHODS:
        raise NodeInputError(f"unknown upscale_method {method!r}")
    if method == "bislerp":
        raise NodeInputError("upscale_method 'bislerp' is not implemented yet")
    s = samples
    if crop == "center":
        old_w, old_h = samples.shape[-1], samples.shape[-2]
        old_aspect, new_aspect = old_w / old_h, width / height
        x = y = 0
        if old_aspect > new_aspect:
            x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
        s = samples.narrow(-2, y, old_h - y * 2).narrow(-1, x, old_w - x * 2)
    return F.interpolate(s, size=(height, width), mode=method)


@nodes.define("LatentUpscale", category="latent", display_name="Upscale Latent",
    inputs=[
        Link("samples", "LATENT"),
        Combo("upscale_method", ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]),
        Int("width", 512, min=0, max=16384, step=8),
        Int("height", 512, min=0, max=16384, step=8),
        Combo("crop", ["disabled", "center"]),
    ],
    outputs=[Output("LATENT")],
)
@node
def latent_upscale(ctx: NodeContext, samples: dict[str, Any], upscale_method: str, width: int, height: int,
                   crop: str = "disabled") -> tuple[dict[str, Any]]:
    z = torch.as_tensor(samples["samples"]).float()
    if width == 0 and height == 0:
        return ({**samples, "samples": z},)
    if width == 0:
        height = max(64, height)
        width = max(64, round(z.shape[-1] * height / z.shape[-2]))
    elif height == 0:
        width = max(64, width)
        height = max(64, round(z.shape[-2] * width / z.shape[-1]))
    else:
        width, height = max(64, width), max(64, height)
    return ({**samples, "samples": _upscale(z, width // 8, height // 8, upscale_method, crop)},)


@nodes.define("LatentUpscaleBy", category="latent", display_name="Upscale Latent By",
    inputs=[
        Link("samples", "LATENT"),
        Combo("upscale_method", ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]),
        Float("scale_by", 1.5, min=0.01, max=8.0, step=0.01),
    ],
    outputs=[Output("LATENT")],
)
@node
def latent_upscale_by(ctx: NodeContext, samples: dict[str, Any], upscale_method: str,
                      scale_by: float) -> tuple[dict[str, Any]]:
    z = torch.as_tensor(samples["samples"]).float()
    width, height = round(z.shape[-1] * scale_by), round(z.shape[-2] * scale_by)
    return ({**samples, "samples": _upscale(z, width, height, upscale_method, "disabled")},)
