"""fp8 weights kept as fp8 in memory and computed per layer in the compute dtype, as ComfyUI runs fp8 and
"scaled fp8" files.

A scaled-fp8 file (ComfyUI's older quantised form) marks itself with a `scaled_fp8` key at the model's prefix
and gives each quantised linear a per-tensor `<layer>.scale_weight`: the real weight is weight · scale_weight.
Key conversions (fused qkv chunks, renames) are followed by converting a state of per-row scale vectors with
the same function as the weights, so each converted weight finds its rows' scales without a name map.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from comfymesh.diffusion.memory.fp8_matmul import Fp8Kernel, scaled_mm_linear, takes_scaled_mm, tensor_scale

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
SCALE_SUFFIX = ".scale_weight"
MARKER = "scaled_fp8"
_IGNORED = (".scale_input",)  # input scales matter only to fp8 matmuls, which this path does not do


def is_fp8(t: torch.Tensor) -> bool:
    return t.dtype in FP8_DTYPES


def split_scales(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """(the state without the scaled-fp8 bookkeeping keys, weight key → its scale)."""
    weights: dict[str, torch.Tensor] = {}
    scales: dict[str, float] = {}
    for k, v in state.items():
        if k == MARKER or k.endswith("." + MARKER) or k.endswith(_IGNORED):
            continue
        if k.endswith(SCALE_SUFFIX):
            scales[k[: -len(SCALE_SUFFIX)] + ".weight"] = float(v.float().reshape(-1)[0])
        else:
            weights[k] = v
    return weights, scales


def row_scales(state: dict[str, torch.Tensor], scales: dict[str, float]) -> dict[str, torch.Tensor]:
    """For each fp8 weight, a float32 vector of its rows' scale (1 where the file gives none)."""
    return {k: torch.full((v.shape[0],), scales.get(k, 1.0), dtype=torch.float32)
            for k, v in state.items() if is_fp8(v)}


Converter = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def converted_row_scales(convert: Converter, state: dict[str, torch.Tensor],
                         scales: dict[str, float]) -> dict[str, torch.Tensor]:
    """Row scales under the converted names: `convert` run on the scale vectors, with every other tensor of
    the state stood in by an empty meta tensor of its shape so the converter finds all it pops."""
    rows = row_scales(state, scales)
    stand_in = {k: rows.get(k, torch.empty(v.shape, device="meta")) for k, v in state.items()}
    return {k: v for k, v in convert(stand_in).items() if v.device.type != "meta"}


class Fp8Linear(nn.Module):
    """A linear layer whose weight stays in fp8; each call upcasts it to the input's dtype and applies the
    rows' scales, or, with the `scaled_mm` kernel (memory.fp8_matmul), multiplies in fp8."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.scale: torch.Tensor
        self.register_buffer("scale", scale.reshape(-1, 1).float())
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.kernel: Fp8Kernel = "upcast"
        # the per-tensor scale the scaled_mm kernel takes: a buffer, so that it moves (and streams) with the weight
        self.tensor_scale: torch.Tensor | None
        self.register_buffer("tensor_scale", None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "scaled_mm":
            return scaled_mm_linear(x, self.weight, self.scale, self.tensor_scale, self.bias)
        w = self.weight.to(x.dtype) * self.scale.to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, w, bias)


def set_fp8_kernel(model: nn.Module, kernel: Fp8Kernel) -> int:
    """Make the model's Fp8Linears compute with `kernel` (the ones _scaled_mm cannot take stay upcast); returns
    how many use it."""
    count = 0
    for module in model.modules():
        if not isinstance(module, Fp8Linear):
            continue
        use = kernel == "scaled_mm" and takes_scaled_mm(module.weight)
        module.kernel = "scaled_mm" if use else "upcast"
        scale = tensor_scale(module.scale) if use else None
        module.tensor_scale = None if scale is None else scale.to(module.scale.device)
        count += use
    return count


def install_fp8_linears(model: nn.Module, state: dict[str, torch.Tensor], scales: dict[str, torch.Tensor],
                        dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Replace each nn.Linear of `model` whose weight is fp8 in `state` by an Fp8Linear holding it; returns
    the rest of the state (in `dtype`) for load_state_dict. Other fp8 tensors (norms, embeddings) upcast."""
    rest = dict(state)
    for name, module in list(model.named_modules()):
        key = f"{name}.weight"
        if not isinstance(module, nn.Linear) or key not in state or not is_fp8(state[key]):
            continue
        weight = rest.pop(key)
        bias = rest.pop(f"{name}.bias", None)
        scale = scales.get(key, torch.ones(weight.shape[0]))
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Fp8Linear(weight, scale, None if bias is None else bias.to(dtype)))
    return {k: _upcast(v, scales.get(k), dtype) for k, v in rest.items()}


def held_by_fp8_linear(model: nn.Module, key: str) -> bool:
    """Whether a state key (weight, bias, scale) belongs to an installed Fp8Linear, which holds it already."""
    name = key.rpartition(".")[0]
    try:
        return isinstance(model.get_submodule(name), Fp8Linear)
    except AttributeError:
        return False


def _upcast(t: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    if not is_fp8(t):
        return t.to(dtype)
    out = t.float()
    if scale is not None:
        out = out * scale.reshape(-1, *([1] * (t.ndim - 1)))
    return out.to(dtype)
