"""Upscale models (ESRGAN and the other single-image architectures spandrel knows), loaded without running
pickled code, and ComfyUI's tiled upscale: overlapping tiles blended with linear feathers.

A `.pth` file is read with `torch.load(weights_only=True)`, which builds tensors and plain containers only
and refuses any other pickled object, so a file that would run code on load is refused before it can."""

from __future__ import annotations

import importlib
import itertools
import pickle
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from comfymesh.contracts.errors import ModelError

# ComfyUI's tiling for ImageUpscaleWithModel
TILE = 512
OVERLAP = 32
# a SwinIR-style state dict saved from a DataParallel wrapper (ComfyUI strips its "module." prefix)
_DATA_PARALLEL_KEY = "module.layers.0.residual_group.blocks.0.norm1.weight"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a `.safetensors` or `.pth` upscale model file; ModelError for a pickle that holds
    anything but tensors and plain containers (it could run code when loaded)."""
    if path.suffix.lower() in (".safetensors", ".sft"):
        state = load_file(str(path))
    else:
        try:
            loaded = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ModelError(f"upscale model {path.name} was refused: its pickle holds objects other than tensors, "
                             "which could run code when loaded; convert it to .safetensors from a trusted source"
                             ) from exc
        if not isinstance(loaded, dict):
            raise ModelError(f"upscale model {path.name} holds a {type(loaded).__name__}, not a state dict")
        state = loaded
    if _DATA_PARALLEL_KEY in state:
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state


def _spandrel() -> types.ModuleType:
    """spandrel, importable without torchvision (installed without it: PyPI's torchvision is a CUDA build
    that cannot load beside a CPU torch, and breaks transformers' imports once there): only two
    architectures it registers use torchvision (LaMa, RestoreFormer), so while spandrel imports they get a
    stand-in that fails when called, and the stand-in leaves sys.modules afterwards."""
    if "spandrel" in sys.modules:
        return sys.modules["spandrel"]
    try:
        importlib.import_module("torchvision.transforms.functional")
        return importlib.import_module("spandrel")
    except (ImportError, RuntimeError):
        for name in [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]:
            del sys.modules[name]

    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise ModelError("this upscale architecture needs torchvision, which cannot load here")

    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = types.SimpleNamespace(BILINEAR="bilinear")  # type: ignore[attr-defined]
    functional.rotate = unavailable  # type: ignore[attr-defined]
    functional.normalize = unavailable  # type: ignore[attr-defined]
    stand_ins = {"torchvision": types.ModuleType("torchvision"),
                 "torchvision.transforms": types.ModuleType("torchvision.transforms"),
                 "torchvision.transforms.functional": functional}
    sys.modules.update(stand_ins)
    try:
        return importlib.import_module("spandrel")
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)


def load_upscale_model(path: Path) -> Any:
    """A spandrel ImageModelDescriptor (eval mode, CPU) for an upscale model file."""
    spandrel = _spandrel()
    state = read_state_dict(path)
    try:
        model = spandrel.ModelLoader().load_from_state_dict(state).eval()
    except spandrel.UnsupportedModelError as exc:
        raise ModelError(f"upscale model {path.name}: no known architecture matches its weights") from exc
    if not isinstance(model, spandrel.ImageModelDescriptor):
        raise ModelError(f"upscale model {path.name} is not a single-image model (it is {type(model).__name__})")
    return model


def tiled_scale(image: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], scale: int, tile: int = TILE,
                overlap: int = OVERLAP, on_tile: Callable[[], None] | None = None) -> torch.Tensor:
    """`fn` (an image [1, C, h, w] to [1, C', h·scale, w·scale]) over `image` [B, C, H, W] in tiles.

    As ComfyUI's tiled_scale: an image no larger than a tile goes whole; otherwise tiles start every
    tile − overlap pixels (the last ones moved back to fit), each output tile is weighted by a mask that
    ramps (t + 1)/f over its f = overlap·scale edge pixels, and the sum is divided by the summed weights."""
    batch, _, height, width = image.shape
    rows: list[torch.Tensor] = []
    for b in range(batch):
        item = image[b:b + 1]
        if height <= tile and width <= tile:
            rows.append(fn(item))
            if on_tile is not None:
                on_tile()
            continue
        out: torch.Tensor | None = None
        weight: torch.Tensor | None = None
        starts = [range(0, size - overlap, tile - overlap) if size > tile else [0] for size in (height, width)]
        for y0, x0 in itertools.product(*starts):
            y = max(0, min(height - overlap, y0))
            x = max(0, min(width - overlap, x0))
            part = fn(item[:, :, y:y + min(tile, height - y), x:x + min(tile, width - x)])
            if out is None or weight is None:
                out = part.new_zeros(1, part.shape[1], height * scale, width * scale)
                weight = torch.zeros_like(out)
            mask = _feather_mask(part, overlap * scale)
            oy, ox = y * scale, x * scale
            out[:, :, oy:oy + part.shape[2], ox:ox + part.shape[3]] += part * mask
            weight[:, :, oy:oy + part.shape[2], ox:ox + part.shape[3]] += mask
            if on_tile is not None:
                on_tile()
        assert out is not None and weight is not None
        rows.append(out / weight)
    return torch.cat(rows)


def _feather_mask(part: torch.Tensor, feather: int) -> torch.Tensor:
    mask = torch.ones_like(part)
    for dim in (2, 3):
        if feather >= mask.shape[dim]:
            continue
        for t in range(feather):
            ramp = (t + 1) / feather
            mask.narrow(dim, t, 1).mul_(ramp)
            mask.narrow(dim, mask.shape[dim] - 1 - t, 1).mul_(ramp)
    return mask


def tile_count(height: int, width: int, tile: int = TILE, overlap: int = OVERLAP) -> int:
    """How many tiles one image of height × width takes (the progress total per image)."""
    if height <= tile and width <= tile:
        return 1
    return (len(range(0, height - overlap, tile - overlap)) if height > tile else 1) * \
        (len(range(0, width - overlap, tile - overlap)) if width > tile else 1)


def make_tiny_esrgan(path: Path, *, scale: int = 4, nf: int = 8, blocks: int = 1, seed: int = 0,
                     in_nc: int = 3, out_nc: int = 3, naming: str = "esrgan") -> Path:
    """A random-weight ESRGAN (RRDBNet) in the original release's key naming (`model.0`, `model.1.sub.N.RDBk.
    convj.0`, upsampling convs every third index) or, with naming="basicsr", Real-ESRGAN's (`conv_first`,
    `body.N.rdbk.convj`, `conv_body`, `conv_upK`, `conv_hr`, `conv_last`); `blocks` RRDB blocks deep, with
    ESRGAN's 32 growth channels (the loaders assume them); `.pth` or `.safetensors` by suffix."""
    gc = 32
    if scale not in (2, 4, 8):
        raise ValueError("an ESRGAN upscales by 2, 4 or 8")
    generator = torch.Generator().manual_seed(seed)

    def conv(cin: int, cout: int) -> dict[str, torch.Tensor]:
        return {"weight": torch.randn(cout, cin, 3, 3, generator=generator) * (0.5 / (cin * 9) ** 0.5),
                "bias": torch.randn(cout, generator=generator) * 0.01}

    layers: dict[str, dict[str, torch.Tensor]] = {"model.0": conv(in_nc, nf)}
    for block, rdb, j in itertools.product(range(blocks), (1, 2, 3), range(1, 6)):
        layers[f"model.1.sub.{block}.RDB{rdb}.conv{j}.0"] = conv(nf + (j - 1) * gc, gc if j < 5 else nf)
    layers[f"model.1.sub.{blocks}"] = conv(nf, nf)
    ups = scale.bit_length() - 1
    for k in range(1, ups + 1):
        layers[f"model.{3 * k}"] = conv(nf, nf)
    layers[f"model.{3 * ups + 2}"] = conv(nf, nf)
    layers[f"model.{3 * ups + 4}"] = conv(nf, out_nc)
    if naming == "basicsr":
        layers = {_basicsr_name(name, blocks, ups): params for name, params in layers.items()}
    state = {f"{name}.{kind}": tensor.contiguous() for name, params in layers.items() for kind, tensor in params.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, str(path))
    return path


def _basicsr_name(name: str, blocks: int, ups: int) -> str:
    """Real-ESRGAN's name for an original-release ESRGAN layer name."""
    parts = name.split(".")
    if name == "model.0":
        return "conv_first"
    if name == f"model.1.sub.{blocks}":
        return "conv_body"
    if parts[1] == "1":  # model.1.sub.<block>.RDB<r>.conv<j>.0
        return f"body.{parts[3]}.{parts[4].lower()}.{parts[5]}"
    index = int(parts[1])
    return {3 * ups + 2: "conv_hr", 3 * ups + 4: "conv_last"}.get(index, f"conv_up{index // 3}")
