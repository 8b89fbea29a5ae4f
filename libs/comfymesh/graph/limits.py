"""Server limits on what one node may make (pixels, batch size, steps), reported like ComfyUI's max errors.

Two places apply them: the orchestrator refuses literal inputs that ask for too much before a job is
queued (`resource_limits`), and every stage checks what each node actually makes (`OutputLimits`), since
a loaded file, a scale factor or a chain of batches only shows its size once the graph runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from comfymesh.contracts.comfy_errors import error_detail
from comfymesh.contracts.errors import NodeInputError

NodeCheck = Callable[[str, dict[str, Any]], list[dict[str, Any]]]
_SIZED = {"EmptyLatentImage", "EmptyImage", "ImageScale", "LatentUpscale", "ImageCrop"}
_STEPPED = {"KSampler", "KSamplerAdvanced"}
# a latent is 1/8 of its image per side for every VAE the diffusion stage loads; it counts as the
# pixels it decodes to, so that the literal check (EmptyLatentImage's width x height) and this one agree
LATENT_SCALE = 8


def _too_big(input_name: str, value: Any, limit: int, what: str) -> dict[str, Any]:
    return error_detail("value_bigger_than_max", f"Value {value} bigger than max of {limit}",
                        f"{input_name}: the server allows at most {limit} {what} (ask the operator to raise "
                        "the COMFYMESH_MAX_* limit)",
                        {"input_name": input_name, "received_value": value, "server_limit": limit})


def resource_limits(max_pixels: int, max_batch: int, max_steps: int) -> NodeCheck:
    """A check that refuses nodes that would make images, batches or step counts beyond the limits."""
    def check(class_type: str, inputs: dict[str, Any]) -> list[dict[str, Any]]:
        errors = []
        width, height = inputs.get("width"), inputs.get("height")
        batch = inputs.get("batch_size")
        count = batch if isinstance(batch, int) and batch > 0 else 1
        if class_type in _SIZED and isinstance(width, int) and isinstance(height, int) \
                and width * height * count > max_pixels:
            errors.append(_too_big("width", f"{width}x{height}x{count}", max_pixels, "pixels per node output"))
        if isinstance(batch, int) and batch > max_batch:
            errors.append(_too_big("batch_size", batch, max_batch, "images per batch"))
        steps = inputs.get("steps")
        if class_type in _STEPPED and isinstance(steps, int) and steps > max_steps:
            errors.append(_too_big("steps", steps, max_steps, "sampling steps"))
        return errors
    return check


def value_extent(type_name: str, value: Any) -> tuple[int, int, int] | None:
    """(width, height, batch) of an IMAGE [B,H,W,C], MASK [B,H,W] or LATENT {"samples": [B,C,(T,)h,w]}
    value (numpy or torch: only its shape is read); None for other types. A latent's frames (video
    latents) multiply its batch, and its sides count in image pixels (LATENT_SCALE)."""
    if type_name == "LATENT":
        shape = getattr(value.get("samples"), "shape", None) if isinstance(value, dict) else None
        if shape is None or len(shape) < 3:
            return None
        frames = math.prod(int(d) for d in shape[2:-2])
        return int(shape[-1]) * LATENT_SCALE, int(shape[-2]) * LATENT_SCALE, int(shape[0]) * frames
    shape = getattr(value, "shape", None)
    sides = {"IMAGE": 3, "MASK": 2}.get(type_name)  # dimensions of one frame
    if shape is None or sides is None or len(shape) not in (sides, sides + 1):
        return None
    batch = int(shape[0]) if len(shape) == sides + 1 else 1
    height, width = int(shape[-sides]), int(shape[-sides + 1])
    return width, height, batch


@dataclass(frozen=True)
class OutputLimits:
    """What one node may make: at most `max_pixels` (width x height x batch) and `max_batch` images."""

    max_pixels: int
    max_batch: int

    def check(self, node_id: str, class_type: str, width: int, height: int, batch: int) -> None:
        """Refuse (a node error, not retryable) a width x height x batch output over a limit."""
        if batch > self.max_batch:
            raise NodeInputError(
                f"{class_type} (node {node_id}) would make a batch of {batch} images, bigger than max of "
                f"{self.max_batch} (COMFYMESH_MAX_BATCH). Use fewer frames or images, or ask the operator to "
                "raise the limit.", node_id=node_id, details="COMFYMESH_MAX_BATCH")
        pixels = width * height * batch
        if pixels > self.max_pixels:
            raise NodeInputError(
                f"{class_type} (node {node_id}) would make {width}x{height}x{batch} = {pixels} pixels, bigger "
                f"than max of {self.max_pixels} (COMFYMESH_MAX_PIXELS). Use a smaller image, scale or batch, or "
                "ask the operator to raise the limit.", node_id=node_id, details="COMFYMESH_MAX_PIXELS")

    def check_value(self, node_id: str, class_type: str, type_name: str, value: Any) -> None:
        """Refuse a node output (IMAGE, MASK or LATENT) over a limit; other types pass."""
        extent = value_extent(type_name, value)
        if extent is not None:
            self.check(node_id, class_type, *extent)
