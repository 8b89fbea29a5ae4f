"""fp8 weights kept as fp8 in memory and computed per layer in the compute dtype, as ComfyUI runs fp8 and
"scaled fp8" files.

A scaled-fp8 file (ComfyUI's older quantised form) marks itself with a `scaled_fp8` key at the model's prefix
and gives each quantised linear a per-tensor `<layer>.scale_weight`: the real weight is weight · scale_weight.
ComfyUI's mixed-precision files (`*_fp8mixed`, `*_fp8_mixed`) give each quantised linear a `<layer>.weight_scale`
instead and a `<layer>.comfy_quant` (JSON bytes naming the format, `float8_e4m3fn`); their other layers are bf16.
Formats other than fp8 (nvfp4, int8, int8 with a ConvRot rotation, ...) are refused naming the file, the layer
and the format.
Key conversions (fused qkv chunks, renames) are followed by converting a state of per-row scale vectors with
the same function as the weights, so each converted weight finds its rows' scales without a name map.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection

import torch
import torch.nn.functional as F
from torch import nn

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.memory.fp8_matmul import Fp8Kernel, scaled_mm_linear, takes_scaled_mm, tensor_scale

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
SCALE_SUFFIX = ".scale_weight"
MIXED_SCALE_SUFFIX = ".weight_scale"  # the mixed-precision files' spelling, beside `<layer>.weight`
QUANT_SUFFIX = ".comfy_quant"
MARKER = "scaled_fp8"
# input scales matter only to fp8 matmuls that quantise their input, which this path does not do
_IGNORED = (".scale_input", ".input_scale", QUANT_SUFFIX)
FP8_FORMATS = ("float8_e4m3fn", "float8_e5m2")
# the formats ComfyUI 0.8.0 loads (QUANT_ALGOS in its comfy/quant_ops.py); int8_tensorwise, its ConvRot form,
# mxfp8 and the 4-bit forms came later (comfy-kitchen 0.2.11 and on), so 0.8.0 fails on those files too
COMFYUI_080_FORMATS = (*FP8_FORMATS, "nvfp4")


def is_fp8(t: torch.Tensor) -> bool:
    return t.dtype in FP8_DTYPES


def bookkeeping(key: str, keys: Collection[str]) -> bool:
    """Whether `key` of a file with `keys` is quantisation bookkeeping, not a weight: the scaled-fp8 marker,
    input scales, `comfy_quant` descriptors, and weight scales (`scale_weight`; `weight_scale` where the layer
    has a `.weight`)."""
    if key == MARKER or key.endswith(("." + MARKER, SCALE_SUFFIX, *_IGNORED)):
        return True
    return key.endswith(MIXED_SCALE_SUFFIX) and key[: -len(MIXED_SCALE_SUFFIX)] + ".weight" in keys


def quant_format(key: str, descriptor: torch.Tensor, source: str) -> str:
    """The format a `<layer>.comfy_quant` descriptor of the file `source` names; ModelError for one this stage
    does not compute (it computes fp8 only), saying whether ComfyUI 0.8.0 loads it."""
    try:
        spec = json.loads(bytes(descriptor.to(torch.uint8).reshape(-1).tolist()).decode("utf-8"))
        fmt = str(spec["format"])
    except (ValueError, KeyError, TypeError):
        raise ModelError(f"{source}: {key} is an unreadable quantisation descriptor (expected JSON naming a "
                         "format)") from None
    if fmt in FP8_FORMATS:
        return fmt
    layer = key[: -len(QUANT_SUFFIX)]
    if spec.get("convrot"):
        fmt_name = f"{fmt!r} with ConvRot rotation (Hadamard groups of {spec.get('convrot_groupsize', 256)})"
    else:
        fmt_name = repr(fmt)
    if fmt in COMFYUI_080_FORMATS:
        why = (f"which ComfyUI 0.8.0 computes with comfy-kitchen's kernels and this stage does not (it reads "
               f"{' and '.join(FP8_FORMATS)})")
    else:
        why = (f"a format ComfyUI 0.8.0, the version this mesh matches, does not load either (it knows "
               f"{', '.join(COMFYUI_080_FORMATS)})")
    raise ModelError(f"{source}: {layer} is quantised as ComfyUI's {fmt_name}, {why}: use the same model's bf16, "
                     "fp8 or fp8mixed file")


def split_scales(state: dict[str, torch.Tensor], source: str) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """(the state without the quantisation bookkeeping keys, weight key → its per-tensor scale), for scaled-fp8
    and mixed-precision files alike; ModelError naming the file `source` for a quantised format other than fp8."""
    for k, v in state.items():
        # every descriptor first: another format's scales (int8's per-row ones) must not be misread as fp8's
        if k.endswith(QUANT_SUFFIX):
            quant_format(k, v, source)
    weights: dict[str, torch.Tensor] = {}
    scales: dict[str, float] = {}
    for k, v in state.items():
        if not bookkeeping(k, state):
            weights[k] = v
            continue
        for suffix in (SCALE_SUFFIX, MIXED_SCALE_SUFFIX):
            if k.endswith(suffix):
                if v.numel() != 1:
                    raise ModelError(f"{source}: {k} is a weight scale of shape {tuple(v.shape)}; only "
                                     "per-tensor fp8 scales are read")
                scales[k[: -len(suffix)] + ".weight"] = float(v.float().reshape(-1)[0])
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


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` in place of the submodule called `name`."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def install_fp8_linears(model: nn.Module, state: dict[str, torch.Tensor], scales: dict[str, torch.Tensor],
                        dtype: torch.dtype, device: torch.device,
                        storage: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Replace each nn.Linear of `model` whose weight is fp8 in `state` by an Fp8Linear holding it on `device`;
    returns the rest of the state on `device` in `dtype` for load_state_dict (other fp8 tensors, norms and
    embeddings, upcast). Tensor by tensor, converted as it arrives: a file in another dtype (T5's fp16 in a bf16
    run) never has both copies on the device at once, which cost SD3.5's first job a 9 GiB peak on the H100.
    With an fp8 `storage` (UNETLoader's weight_dtype) every linear is held so, each weight rounded through `dtype`
    as `hold_in` rounds a built model's, so the model never exists at full width first."""
    rest = dict(state)
    scales = {k: v.to(device) for k, v in scales.items()}
    for name, module in list(model.named_modules()):
        key = f"{name}.weight"
        if not isinstance(module, nn.Linear) or key not in state or not (is_fp8(state[key]) or storage):
            continue
        weight = rest.pop(key).to(device)
        if not is_fp8(weight):  # held in `storage` at unit scale, as hold_in holds it
            weight = weight.to(dtype).to(storage)
        bias = rest.pop(f"{name}.bias", None)
        scale = scales.get(key, torch.ones(weight.shape[0], device=device))
        _replace(model, name, Fp8Linear(weight, scale, None if bias is None else bias.to(device, dtype)))
    return {k: _upcast(v.to(device), scales.get(k), dtype) if is_fp8(v) else v.to(device, dtype)
            for k, v in rest.items()}


def hold_in(model: nn.Module, storage: torch.dtype) -> None:
    """UNETLoader's fp8 weight_dtype on a model built in its compute dtype, held as ComfyUI holds it: each linear's
    weight stored in `storage` (an Fp8Linear at unit scale: 1 byte an element), every other weight rounded to
    `storage`'s values in its own dtype. Linears already fp8 (an fp8 file's) keep their weights and scales. The
    numerics are the rounded weights', bit for bit: an Fp8Linear upcasts its weight and multiplies by 1."""
    with torch.no_grad():
        for name, module in list(model.named_modules()):
            if not isinstance(module, nn.Linear) or is_fp8(module.weight):
                continue
            weight = module.weight.to(storage)
            _replace(model, name, Fp8Linear(weight, torch.ones(weight.shape[0], device=weight.device), module.bias))
        for tensor in model.parameters():
            if tensor.is_floating_point() and not is_fp8(tensor):
                tensor.copy_(tensor.to(storage).to(tensor.dtype))


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
