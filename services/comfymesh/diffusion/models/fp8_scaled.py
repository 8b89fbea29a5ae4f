"""ComfyUI's "scaled fp8" files: fp8 weights with a per-tensor scale beside each (`<layer>.scale_weight`, marked
by a `scaled_fp8` key; newer files: `<layer>.weight_scale` with `<layer>.comfy_quant`). The real weight is
fp8 weight × scale, which is what ComfyUI computes with; input scales only matter to fp8 matmuls.
"""

from __future__ import annotations

import torch

from comfymesh.contracts.errors import ModelError

_SCALES = (".scale_weight", ".weight_scale")
_DROPPED = (".scale_input", ".input_scale", ".comfy_quant")


def is_scaled_fp8(state: dict[str, torch.Tensor]) -> bool:
    return any(k == "scaled_fp8" or k.endswith(".scaled_fp8") or k.endswith(_SCALES) for k in state)


def dequantise_scaled_fp8(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32,
                          ) -> dict[str, torch.Tensor]:
    """The state dict with every scaled weight multiplied out (in `dtype`) and the scale keys removed; a
    state without scales comes back as it is."""
    if not is_scaled_fp8(state):
        return state
    if any(k.endswith(".weight_scale_2") for k in state):
        raise ModelError("NVFP4 block-scaled weights are not supported (only per-tensor scaled fp8)")
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key == "scaled_fp8" or key.endswith((".scaled_fp8", *_DROPPED, *_SCALES)):
            continue
        scale = next((state[key[: -len(".weight")] + s] for s in _SCALES
                      if key.endswith(".weight") and key[: -len(".weight")] + s in state), None)
        out[key] = tensor if scale is None else tensor.to(dtype) * scale.to(dtype)
    return out
