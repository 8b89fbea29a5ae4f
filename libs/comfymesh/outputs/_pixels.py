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


def frames_uint8(images: Any) -> list[np.ndarray]:
    """An IMAGE batch as 8-bit [H,W,C] frames, exactly as to_uint8 makes them.

    A torch tensor is converted where it lives (on the GPU, or on all CPU cores) before it is copied:
    a quarter of the bytes cross to the host, and numpy's single-threaded pass over float32 is skipped.
    """
    if not hasattr(images, "detach"):
        return [to_uint8(frame) for frame in as_image_batch(images)]
    import torch  # already loaded in any process that hands over a tensor

    batch = images.detach()
    batch = batch[None] if batch.ndim == 3 else batch
    if batch.ndim != 4:
        raise ValueError(f"expected an image batch [B,H,W,C], got shape {tuple(batch.shape)}")
    scaled = batch.to(torch.float32) * 255.0
    # NaN -> 0 and +-inf -> the clip bounds, as in to_uint8; the cast truncates like numpy's
    eight_bit = torch.nan_to_num(scaled, nan=0.0).clamp_(0.0, 255.0).to(torch.uint8)
    if eight_bit.is_cuda:
        # into pinned memory (a cached block after the first frame): one DMA, not a copy staged through the
        # driver's own buffer as for pageable memory; the arrays keep the block until they are gone
        host = torch.empty(eight_bit.shape, dtype=torch.uint8, pin_memory=True)
        host.copy_(eight_bit, non_blocking=True)
        torch.cuda.current_stream(eight_bit.device).synchronize()
        return list(host.numpy())
    return list(eight_bit.numpy())
