"""FluxKontextImageScale (comfy_extras.nodes_flux, V3): an image resized to the FLUX Kontext training size whose
aspect ratio is nearest its own, centre-cropped to that aspect first and scaled with lanczos, as ComfyUI's
common_upscale does; the pixels go through the same ImageMagick resize as ImageScale."""

from __future__ import annotations

from typing import Any

import numpy as np

from comfymesh.catalog.schema import Link, Output
from comfymesh.imaging.nodes import define_v3, upscale
from comfymesh.outputs import as_image_batch
from comfymesh.stage.node import NodeContext

# ComfyUI 0.8.0's PREFERED_KONTEXT_RESOLUTIONS, (width, height)
KONTEXT_RESOLUTIONS = (
    (672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248), (880, 1184), (944, 1104),
    (1024, 1024), (1104, 944), (1184, 880), (1248, 832), (1328, 800), (1392, 752), (1456, 720), (1504, 688),
    (1568, 672),
)


def kontext_size(width: int, height: int) -> tuple[int, int]:
    """The listed size whose aspect is nearest width/height (ties: the smaller width, as Python's min of
    (difference, width, height) tuples picks)."""
    aspect = width / height
    _, w, h = min((abs(aspect - w / h), w, h) for w, h in KONTEXT_RESOLUTIONS)
    return w, h


@define_v3("FluxKontextImageScale", "nodes_flux", "advanced/conditioning/flux",
           description="This node resizes the image to one that is more optimal for flux kontext.",
           inputs=[Link("image", "IMAGE", {})], outputs=[Output("IMAGE")])
def flux_kontext_image_scale(ctx: NodeContext, image: Any) -> tuple[np.ndarray]:
    images = as_image_batch(image)
    width, height = kontext_size(images.shape[2], images.shape[1])
    return (upscale(images, "lanczos", width, height, "center"),)
