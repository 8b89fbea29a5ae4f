"""Latent operations of ComfyUI's nodes.py (composite, blend, rotate, flip, crop, batch slicing, noise masks)
and comfy_extras.nodes_sd3's 16-channel empty latent. Each keeps the latent's other keys, as ComfyUI does."""

from __future__ import annotations

import math
from typing import Any

import torch

from comfymesh.catalog.schema import MAX_RESOLUTION, Combo, ComboV3, Float, Int, Link, Output
from comfymesh.diffusion.nodes.failures import node
from comfymesh.diffusion.nodes.latent import _upscale
from comfymesh.diffusion.nodes.registry import nodes
from comfymesh.stage.node import NodeContext

Latent = dict[str, Any]


def _samples(latent: Latent) -> torch.Tensor:
    return torch.as_tensor(latent["samples"]).float()


def _feather_mask(patch: torch.Tensor, x: int, y: int, target: torch.Size, feather: int) -> torch.Tensor:
    """Weights ramping 1/feather .. 1 over `feather` rows/columns on each edge that lies inside the target."""
    mask = torch.ones_like(patch)
    h, w = patch.shape[2], patch.shape[3]
    for t in range(feather):
        ramp = (t + 1) / feather
        if y != 0:
            mask[:, :, t] *= ramp
        if y + h < target[2]:
            mask[:, :, h - 1 - t] *= ramp
        if x != 0:
            mask[:, :, :, t] *= ramp
        if x + w < target[3]:
            mask[:, :, :, w - 1 - t] *= ramp
    return mask


@nodes.define("LatentComposite", category="latent", display_name="Latent Composite",
    inputs=[
        Link("samples_to", "LATENT"),
        Link("samples_from", "LATENT"),
        Int("x", 0, min=0, max=MAX_RESOLUTION, step=8),
        Int("y", 0, min=0, max=MAX_RESOLUTION, step=8),
        Int("feather", 0, min=0, max=MAX_RESOLUTION, step=8),
    ],
    outputs=[Output("LATENT")],
)
@node
def latent_composite(ctx: NodeContext, samples_to: Latent, samples_from: Latent, x: int, y: int,
                     feather: int = 0) -> tuple[Latent]:
    x, y, feather = x // 8, y // 8, feather // 8
    out = _samples(samples_to).clone()
    patch = _samples(samples_from)[:, :, : max(out.shape[2] - y, 0), : max(out.shape[3] - x, 0)]
    h, w = patch.shape[2], patch.shape[3]
    region = out[:, :, y : y + h, x : x + w]
    if feather == 0:
        region[...] = patch
    else:
        mask = _feather_mask(patch, x, y, out.shape, feather)
        region[...] = patch * mask + region * (1.0 - mask)
    return ({**samples_to, "samples": out},)


@nodes.define("LatentBlend", category="_for_testing", display_name="Latent Blend",
    inputs=[
        Link("samples1", "LATENT"),
        Link("samples2", "LATENT"),
        Float("blend_factor", 0.5, min=0, max=1, step=0.01),
    ],
    outputs=[Output("LATENT")],
)
@node
def latent_blend(ctx: NodeContext, samples1: Latent, samples2: Latent, blend_factor: float) -> tuple[Latent]:
    a, b = _samples(samples1), _samples(samples2)
    if a.shape != b.shape:
        b = _upscale(b, a.shape[3], a.shape[2], "bicubic", "center")
    return ({**samples1, "samples": a * blend_factor + b * (1 - blend_factor)},)


ROTATIONS = {"none": 0, "90 degrees": 1, "180 degrees": 2, "270 degrees": 3}


@nodes.define("LatentRotate", category="latent/transform", display_name="Rotate Latent",
    inputs=[
        Link("samples", "LATENT"),
        Combo("rotation", list(ROTATIONS)),
    ],
    outputs=[Output("LATENT")],
)
@node
def latent_rotate(ctx: NodeContext, samples: Latent, rotation: str) -> tuple[Latent]:
    # clockwise quarter turns, as ComfyUI's rot90 over dims (3, 2)
    return ({**samples, "samples": torch.rot90(_samples(samples), k=ROTATIONS.get(rotation, 0), dims=[3, 2])},)


@nodes.define("LatentFlip", category="latent/transform", display_name="Flip Latent",
    inputs=[
        Link("samples", "LATENT"),
        Combo("flip_method", ["x-axis: vertically", "y-axis: horizontally"]),
    ],
    outputs=[Output("LATENT")],
)
@node
def latent_flip(ctx: NodeContext, samples: Latent, flip_method: str) -> tuple[Latent]:
    z = _samples(samples)
    if flip_method.startswith("x"):
        z = torch.flip(z, dims=[2])
    elif flip_method.startswith("y"):
        z = torch.flip(z, dims=[3])
    return ({**samples, "samples": z},)


@nodes.define("LatentCrop", category="latent/transform", display_name="Crop Latent",
    inputs=[
        Link("samples", "LATENT"),
        Int("width", 512, min=64, max=MAX_RESOLUTION, step=8),
        Int("height", 512, min=64, max=MAX_RESOLUTION, step=8),
        Int("x", 0, min=0, max=MAX_RESOLUTION, step=8),
        Int("y", 0, min=0, max=MAX_RESOLUTION, step=8),
    ],
    outputs=[Output("LATENT")],
)
@node
def latent_crop(ctx: NodeContext, samples: Latent, width: int, height: int, x: int, y: int) -> tuple[Latent]:
    z = _samples(samples)
    # the crop keeps at least 8 latent pixels (64 image pixels) from its origin
    x, y = min(x // 8, z.shape[3] - 8), min(y // 8, z.shape[2] - 8)
    return ({**samples, "samples": z[:, :, y : y + height // 8, x : x + width // 8]},)


def _masks_per_item(masks: torch.Tensor, batch: int) -> torch.Tensor:
    if masks.shape[0] < batch:
        masks = masks.repeat(math.ceil(batch / masks.shape[0]), 1, 1, 1)[:batch]
    return masks


@nodes.define("LatentFromBatch", category="latent/batch", display_name="Latent From Batch",
    inputs=[
        Link("samples", "LATENT"),
        Int("batch_index", 0, min=0, max=63),
        Int("length", 1, min=1, max=64),
    ],
    outputs=[Output("LATENT")],
)
@node
def latent_from_batch(ctx: NodeContext, samples: Latent, batch_index: int, length: int) -> tuple[Latent]:
    z = _samples(samples)
    start = min(z.shape[0] - 1, batch_index)
    length = min(z.shape[0] - start, length)
    out: Latent = {**samples, "samples": z[start : start + length].clone()}
    if "noise_mask" in samples:
        masks = torch.as_tensor(samples["noise_mask"])
        out["noise_mask"] = masks.clone() if masks.shape[0] == 1 else \
            _masks_per_item(masks, z.shape[0])[start : start + length].clone()
    # which seeds' noise the items get: their places in the original batch
    indexes = samples.get("batch_index")
    out["batch_index"] = list(range(start, start + length)) if indexes is None else \
        list(indexes)[start : start + length]
    return (out,)


@nodes.define("RepeatLatentBatch", category="latent/batch", display_name="Repeat Latent Batch",
    inputs=[
        Link("samples", "LATENT"),
        Int("amount", 1, min=1, max=64),
    ],
    outputs=[Output("LATENT")],
)
@node
def repeat_latent_batch(ctx: NodeContext, samples: Latent, amount: int) -> tuple[Latent]:
    out: Latent = {**samples, "samples": _samples(samples).repeat(amount, 1, 1, 1)}
    if "noise_mask" in samples and torch.as_tensor(samples["noise_mask"]).shape[0] > 1:
        out["noise_mask"] = torch.as_tensor(samples["noise_mask"]).repeat(amount, 1, 1, 1)
    if "batch_index" in samples:
        indexes = list(samples["batch_index"])
        offset = max(indexes) - min(indexes) + 1
        out["batch_index"] = indexes + [i + k * offset for k in range(1, amount) for i in indexes]
    return (out,)


@nodes.define("SetLatentNoiseMask", category="latent/inpaint", display_name="Set Latent Noise Mask",
    inputs=[
        Link("samples", "LATENT"),
        Link("mask", "MASK"),
    ],
    outputs=[Output("LATENT")],
)
@node
def set_latent_noise_mask(ctx: NodeContext, samples: Latent, mask: Any) -> tuple[Latent]:
    m = torch.as_tensor(mask).float()
    return ({**samples, "noise_mask": m.reshape(-1, 1, m.shape[-2], m.shape[-1])},)


@nodes.define("EmptySD3LatentImage", category="latent/sd3", display_name=None, python_module="comfy_extras.nodes_sd3",
    inputs=[
        Int("width", 1024, min=16, max=MAX_RESOLUTION, step=16),
        Int("height", 1024, min=16, max=MAX_RESOLUTION, step=16),
        Int("batch_size", 1, min=1, max=4096),
    ],
    outputs=[Output("LATENT")],
    deprecated=False, experimental=False, api_node=False, output_matchtypes=None, output_tooltips=[None],
)
@node
def empty_sd3_latent_image(ctx: NodeContext, width: int, height: int, batch_size: int = 1) -> tuple[Latent]:
    return ({"samples": torch.zeros([batch_size, 16, height // 8, width // 8], dtype=torch.float32)},)


NODES_LATENT: dict[str, Any] = {"python_module": "comfy_extras.nodes_latent", "display_name": None, "deprecated": False,
                "experimental": False, "api_node": False, "output_matchtypes": None, "output_tooltips": [None]}


def _axis(samples: torch.Tensor, dim: str) -> int:
    """ComfyUI's x / y / t axis counted from the end: on a 4-D image latent "t" lands on the channels."""
    return samples.ndim - {"x": 1, "y": 2, "t": 3}[dim]


@nodes.define("LatentCut", category="latent/advanced",
    inputs=[
        Link("samples", "LATENT", {}),
        ComboV3("dim", ["x", "y", "t"]),
        Int("index", 0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, step=1),
        Int("amount", 1, min=1, max=MAX_RESOLUTION, step=1),
    ],
    outputs=[Output("LATENT")], **NODES_LATENT,
)
@node
def latent_cut(ctx: NodeContext, samples: Latent, dim: str, index: int, amount: int) -> tuple[Latent]:
    s = torch.as_tensor(samples["samples"])
    axis = _axis(s, dim)
    size = s.shape[axis]
    # an index past either end is pulled back inside, and the amount shortened to what is left
    if index >= 0:
        index = min(index, size - 1)
        amount = min(size - index, amount)
    else:
        index = max(index, -size)
        amount = min(-index, amount)
    return ({**samples, "samples": torch.narrow(s, axis, index, amount)},)


@nodes.define("LatentCutToBatch", category="latent/advanced",
    inputs=[
        Link("samples", "LATENT", {}),
        ComboV3("dim", ["t", "x", "y"]),
        Int("slice_size", 1, min=1, max=MAX_RESOLUTION, step=1),
    ],
    outputs=[Output("LATENT")], **NODES_LATENT,
)
@node
def latent_cut_to_batch(ctx: NodeContext, samples: Latent, dim: str, slice_size: int) -> tuple[Latent]:
    s = torch.as_tensor(samples["samples"])
    axis = _axis(s, dim)
    if axis < 2:  # "t" of an image latent: ComfyUI returns the latent as it came
        return (samples,)
    moved = s.movedim(axis, 1)
    if moved.shape[1] < slice_size:
        slice_size = moved.shape[1]
    else:  # a remainder shorter than one slice is dropped
        moved = moved[:, :moved.shape[1] // slice_size * slice_size]
    cut = moved.reshape([-1, slice_size, *moved.shape[2:]]).movedim(1, axis)
    return ({**samples, "samples": cut},)
