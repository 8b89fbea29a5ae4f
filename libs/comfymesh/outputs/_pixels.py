"""IMAGE batches as numpy arrays, and their 8-bit form as ComfyUI writes it."""

from __future__ import annotations

from typing import Any

import numpy as np


def as_image_batch(images: Any) -> np.ndarray:
    """An IMAGE value (numpy or torch, [B,H,W,C] or one [H,W,C] frame) as float32 numpy [B,H,W,C]."""
    if hasattr(images, "detach"):  # a torch tensor; torch itself is never imported here
        images = images.detach().cpu().numpy()
    batch = np.asarray(images, dtype=np.float32)
    if batch.ndim == 3:
        batch = batch[None]
    if batch.ndim != 4:
        raise ValueError(f"expected an image batch [B,H,W,C], got shape {batch.shape}")
    return batch


def to_uint8(frame: np.ndarray) -> np.ndarray:
    """255·x in float32, clipped to [0, 255], then truncated (not rounded) like ComfyUI's SaveImage.

    NaN has no defined value there; it becomes 0 here rather than whatever the cast happens to give.
    """
    scaled = np.multiply(frame, np.float32(255.0), dtype=np.float32)
    np.fmax(scaled, 0.0, out=scaled)  # fmax drops NaN for the other operand: NaN -> 0
    np.minimum(scaled, 255.0, out=scaled)
    return scaled.astype(np.uint8)
