"""Server limits on what one node may ask for (pixels, batch size, steps), reported like ComfyUI's max errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

NodeCheck = Callable[[str, dict[str, Any]], list[dict[str, Any]]]
_SIZED = {"EmptyLatentImage", "EmptyImage", "ImageScale", "LatentUpscale", "ImageCrop"}
_STEPPED = {"KSampler", "KSamplerAdvanced"}


def _too_big(input_name: str, value: Any, limit: int, what: str) -> dict[str, Any]:
    return {"type": "value_bigger_than_max", "message": f"Value {value} bigger than max of {limit}",
            "details": f"{input_name}: the server allows at most {limit} {what} (ask the operator to raise "
                       "the COMFYMESH_MAX_* limit)",
            "extra_info": {"input_name": input_name, "received_value": value, "server_limit": limit}}


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
