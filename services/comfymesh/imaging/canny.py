"""Canny edges as kornia.filters.canny computes them (ComfyUI's Canny node calls it), in numpy float32.

    grey  = 0.299 R + 0.587 G + 0.114 B                    [B,H,W]
    blur  = 5x5 gaussian, sigma 1, separable, reflect-padded (edge pixel not repeated)
    gx,gy = unnormalised 3x3 Sobel cross-correlation, edge-replicated
    mag   = sqrt(gx² + gy² + 1e-6); direction = round(atan2(gy, gx) / 45°) mod 8
    NMS   : kept where mag beats both neighbours along the direction (a tie counts as a win only towards
            the right or lower neighbour, as kornia and OpenCV do) and beats a flat pixel
    edges = weak (mag > low) pixels 8-connected to a strong (mag > high) one, as 0.0 / 1.0
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage

EPS = np.float32(1e-6)
GREY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)
# the neighbour of each direction k (k·45°, y down), as (dy, dx); kornia's order
_OFFSETS = ((0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1))


def _gaussian_1d(size: int = 5, sigma: float = 1.0) -> np.ndarray:
    x = np.arange(size, dtype=np.float32) - size // 2
    weights = np.exp(-(x * x) / np.float32(2.0 * sigma * sigma))
    return (weights / weights.sum()).astype(np.float32)


def _correlate_axis(image: np.ndarray, taps: np.ndarray, axis: int, mode: str) -> np.ndarray:
    """1-D cross-correlation of a [B,H,W] batch along `axis` (1 or 2), padded by numpy's `mode`."""
    half = len(taps) // 2
    pad = [(0, 0), (0, 0), (0, 0)]
    pad[axis] = (half, half)
    padded = np.pad(image, pad, mode=mode)  # type: ignore[call-overload]
    size = image.shape[axis]
    out = np.zeros_like(image)
    for k, tap in enumerate(taps):
        if tap != 0:
            out += np.float32(tap) * np.take(padded, np.arange(k, k + size), axis=axis)
    return out


def grey(images: np.ndarray) -> np.ndarray:
    """RGB [B,H,W,3] to grey [B,H,W] with kornia's (ITU-R 601) weights."""
    return (images[..., :3].astype(np.float32) * GREY_WEIGHTS).sum(axis=-1, dtype=np.float32)


def canny(grey_images: np.ndarray, low_threshold: float, high_threshold: float) -> np.ndarray:
    """Edge maps [B,H,W] of 0.0 or 1.0 for grey images [B,H,W] in [0, 1]."""
    taps = _gaussian_1d()
    blurred = _correlate_axis(_correlate_axis(grey_images.astype(np.float32), taps, 2, "reflect"), taps, 1, "reflect")
    smooth, slope = np.array([1, 2, 1], np.float32), np.array([-1, 0, 1], np.float32)
    gx = _correlate_axis(_correlate_axis(blurred, slope, 2, "edge"), smooth, 1, "edge")
    gy = _correlate_axis(_correlate_axis(blurred, smooth, 2, "edge"), slope, 1, "edge")
    # one pixel of no gradient around the image: its magnitude is sqrt(eps), which a kept pixel must beat
    padded = np.sqrt(np.pad(gx * gx + gy * gy, [(0, 0), (1, 1), (1, 1)]) + EPS, dtype=np.float32)
    height, width = gx.shape[1:]
    magnitude = padded[:, 1:-1, 1:-1]
    direction = (np.round(np.arctan2(gy, gx) * np.float32(4 / np.pi)) % 8).astype(np.int64)
    neighbours = np.stack([padded[:, 1 + dy:1 + dy + height, 1 + dx:1 + dx + width] for dy, dx in _OFFSETS])
    forward = np.take_along_axis(neighbours, direction[None], 0)[0]
    backward = np.take_along_axis(neighbours, ((direction + 4) % 8)[None], 0)[0]

    def beats(neighbour: np.ndarray, towards: np.ndarray) -> np.ndarray:
        return (magnitude > neighbour) | (((towards == 0) | (towards == 2)) & (magnitude == neighbour))

    kept = beats(forward, direction) & beats(backward, (direction + 4) % 8) & (magnitude > np.sqrt(EPS))
    magnitude = magnitude * kept
    weak, strong = magnitude > low_threshold, magnitude > high_threshold
    edges = np.zeros(magnitude.shape, np.float32)
    for index in range(len(edges)):
        labels, count = scipy.ndimage.label(weak[index], structure=np.ones((3, 3)))
        if count:
            reached = np.zeros(count + 1, bool)
            reached[np.unique(labels[strong[index]])] = True
            reached[0] = False
            edges[index] = reached[labels]
    return edges
