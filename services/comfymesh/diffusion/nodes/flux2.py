"""FLUX.2's own nodes (comfy_extras.nodes_flux, V3 declarations): EmptyFlux2LatentImage, the 128-channel latent at
a sixteenth of the image size, and Flux2Scheduler, the σ schedule fitted to the image size (sampling.flux2_schedule).
Reference images reach FLUX.2 through ReferenceLatent (nodes.flux_conditioning)."""

from __future__ import annotations

from typing import Any

import torch

from comfymesh.catalog.schema import MAX_RESOLUTION, Int, Output
from comfymesh.diffusion.nodes.failures import node
from comfymesh.diffusion.nodes.registry import nodes
from comfymesh.diffusion.sampling.flux2_schedule import flux2_sigmas
from comfymesh.stage.node import NodeContext

FLUX_MODULE = "comfy_extras.nodes_flux"
LATENT_CHANNELS = 128
SPATIAL = 16  # pixels per latent cell: the VAE's 8, then 2×2 cells folded into channels


def _v3(name: str, *, category: str, display_name: str | None = None, inputs: list[Any], output: str) -> Any:
    """A V3 node of comfy_extras.nodes_flux with one output, as 0.8.0 declares these in `/object_info`."""
    return nodes.define(name, category=category, display_name=display_name, description="", python_module=FLUX_MODULE,
                        inputs=inputs, outputs=[Output(output)], deprecated=False, experimental=False,
                        api_node=False, output_matchtypes=None, output_tooltips=[None])


@_v3("EmptyFlux2LatentImage", category="latent", display_name="Empty Flux 2 Latent", output="LATENT", inputs=[
    Int("width", 1024, min=16, max=MAX_RESOLUTION, step=16),
    Int("height", 1024, min=16, max=MAX_RESOLUTION, step=16),
    Int("batch_size", 1, min=1, max=4096),
])
@node
def empty_flux2_latent_image(ctx: NodeContext, width: int, height: int, batch_size: int = 1) -> tuple[dict[str, Any]]:
    return ({"samples": torch.zeros([batch_size, LATENT_CHANNELS, height // SPATIAL, width // SPATIAL])},)


@_v3("Flux2Scheduler", category="sampling/custom_sampling/schedulers", output="SIGMAS", inputs=[
    Int("steps", 20, min=1, max=4096),
    Int("width", 1024, min=16, max=MAX_RESOLUTION, step=1),
    Int("height", 1024, min=16, max=MAX_RESOLUTION, step=1),
])
@node
def flux2_scheduler(ctx: NodeContext, steps: int, width: int, height: int) -> tuple[torch.Tensor]:
    return (flux2_sigmas(int(steps), int(width), int(height)),)
