"""Upscale-model nodes (comfy_extras.nodes_upscale_model, V3 declarations): UpscaleModelLoader and
ImageUpscaleWithModel, tiled as ComfyUI tiles, halving the tile on running out of GPU memory."""

from __future__ import annotations

from typing import Any

import torch

from comfymesh.catalog.schema import ComboV3, Link, Output, Source
from comfymesh.contracts.errors import ResourceExhaustedError
from comfymesh.diffusion.models import upscale
from comfymesh.diffusion.nodes.failures import node
from comfymesh.diffusion.nodes.file_models import file_handle, resident
from comfymesh.diffusion.nodes.registry import nodes
from comfymesh.stage.node import NodeContext

MODULE = "comfy_extras.nodes_upscale_model"
V3: dict[str, Any] = {"python_module": MODULE, "deprecated": False, "experimental": False, "api_node": False,
      "output_matchtypes": None, "output_tooltips": [None]}
KIND = "upscale_model"
FOLDER = "upscale_models"
# ComfyUI gives up halving the tile below this size
MIN_TILE = 128


@nodes.define("UpscaleModelLoader", category="loaders", display_name="Load Upscale Model",
              inputs=[ComboV3("model_name", Source(f"models/{FOLDER}"))], outputs=[Output("UPSCALE_MODEL")], **V3)
@node
def upscale_model_loader(ctx: NodeContext, model_name: str) -> tuple[dict[str, Any]]:
    digest, _ = resident(ctx, KIND, FOLDER, model_name, upscale.load_upscale_model)
    return (file_handle(KIND, model_name, digest),)


@nodes.define("ImageUpscaleWithModel", category="image/upscaling", display_name="Upscale Image (using Model)",
              inputs=[Link("upscale_model", "UPSCALE_MODEL", {}), Link("image", "IMAGE", {})], outputs=[Output("IMAGE")],
              **V3)
@node
def image_upscale_with_model(ctx: NodeContext, upscale_model: Any, image: Any) -> tuple[torch.Tensor]:
    model = resident(ctx, KIND, FOLDER, upscale_model, upscale.load_upscale_model)[1]
    pixels = torch.as_tensor(image).float()
    batch, height, width = pixels.shape[0], pixels.shape[1], pixels.shape[2]
    ctx.check_size(width * model.scale, height * model.scale, batch)
    x = pixels.movedim(-1, 1).to(next(model.model.parameters()).device)
    tile = upscale.TILE
    while True:
        try:
            out = _upscale_tiled(ctx, model, x, tile)
            break
        except torch.cuda.OutOfMemoryError as exc:
            tile //= 2
            if tile < MIN_TILE:
                raise ResourceExhaustedError(f"out of GPU memory upscaling, even in {tile * 2}-pixel tiles",
                                             node_id=ctx.node_id) from exc
    return (torch.clamp(out.movedim(1, -1), 0.0, 1.0).float().cpu(),)


def _upscale_tiled(ctx: NodeContext, model: Any, x: torch.Tensor, tile: int) -> torch.Tensor:
    """One pass in tiles of `tile` pixels, reporting each tile and stopping when the job is cancelled."""
    total = x.shape[0] * upscale.tile_count(x.shape[2], x.shape[3], tile)
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        ctx.report_progress(done, total)
        ctx.check_cancelled()

    with torch.no_grad():
        return upscale.tiled_scale(x, model, model.scale, tile=tile, on_tile=step)
