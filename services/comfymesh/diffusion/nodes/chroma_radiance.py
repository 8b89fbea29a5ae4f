"""Chroma Radiance's nodes (comfy_extras/nodes_chroma_radiance.py), declared as ComfyUI 0.8.0's V3 schemas.

Chroma Radiance samples in pixel space: its "latent" is the RGB image itself, 3 channels at full size, which
EmptyChromaRadianceLatentImage makes (zeros). ChromaRadianceOptions only sets the model's NeRF tile size over a σ
range: tiling splits the NeRF head's per-patch rows into groups without changing any row's result, so here the
model passes through unchanged (the options are checked, as ComfyUI's node checks its inputs' ranges).
"""

from __future__ import annotations

from typing import Any

import torch

from comfymesh.catalog.schema import Boolean, Float, Int, Link, Output
from comfymesh.contracts.errors import NodeInputError
from comfymesh.contracts.handles import HandleKind, ModelHandle
from comfymesh.diffusion.nodes.failures import node
from comfymesh.diffusion.nodes.handles import expect_handle
from comfymesh.diffusion.nodes.registry import nodes
from comfymesh.stage.node import NodeContext

MODULE = "comfy_extras.nodes_chroma_radiance"
MAX_RESOLUTION = 16384
CHANNELS = 3  # ComfyUI's ChromaRadiance latent format: RGB, no spatial compression


def _v3(name: str, category: str, inputs: list[Any], outputs: list[Output], description: str = "") -> Any:
    return nodes.define(name, category=category, display_name=None, description=description, python_module=MODULE,
                        inputs=inputs, outputs=outputs, deprecated=False, experimental=False, api_node=False,
                        output_matchtypes=None, output_tooltips=[None] * len(outputs))


@_v3("EmptyChromaRadianceLatentImage", "latent/chroma_radiance",
     [Int("width", 1024, min=16, max=MAX_RESOLUTION, step=16), Int("height", 1024, min=16, max=MAX_RESOLUTION, step=16),
      Int("batch_size", 1, min=1, max=4096)],
     [Output("LATENT")])
@node
def empty_chroma_radiance_latent(ctx: NodeContext, width: int, height: int,
                                 batch_size: int = 1) -> tuple[dict[str, Any]]:
    return ({"samples": torch.zeros([batch_size, CHANNELS, height, width], dtype=torch.float32)},)


@_v3("ChromaRadianceOptions", "model_patches/chroma_radiance",
     [Link("model", "MODEL", {}),
      Boolean("preserve_wrapper", True, tooltip="When enabled, will delegate to an existing model function wrapper if "
                                                "it exists. Generally should be left enabled."),
      Float("start_sigma", 1.0, min=0.0, max=1.0, tooltip="First sigma that these options will be in effect."),
      Float("end_sigma", 0.0, min=0.0, max=1.0, tooltip="Last sigma that these options will be in effect."),
      Int("nerf_tile_size", -1, min=-1, tooltip="Allows overriding the default NeRF tile size. -1 means use the "
                                                "default (32). 0 means use non-tiling mode (may require a lot of "
                                                "VRAM).")],
     [Output("MODEL")], description="Allows setting advanced options for the Chroma Radiance model.")
@node
def chroma_radiance_options(ctx: NodeContext, model: ModelHandle, preserve_wrapper: bool, start_sigma: float,
                            end_sigma: float, nerf_tile_size: int) -> tuple[ModelHandle]:
    handle = expect_handle(ctx, model, HandleKind.MODEL)
    if nerf_tile_size < -1:
        raise NodeInputError(f"nerf_tile_size {nerf_tile_size} is below -1", node_id=ctx.node_id)
    return (handle,)
