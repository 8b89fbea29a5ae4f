"""Tiny random LoRAs for the registered families' diffusion models, in the key formats real files use: kohya
(`lora_unet_<ComfyUI name>` with lora_up/lora_down/alpha, as sd-scripts writes FLUX's) and diffusers/PEFT
(`transformer.<diffusers name>.lora_B/lora_A`, as AI-toolkit and diffusers' trainers write them; no alpha).

`peft_from_kohya` rewrites a kohya file's pairs as the same weights in diffusers' names: each ComfyUI weight's
up matrix goes through the family's converter (row splits and reorders only), its down matrix is shared by the
pieces, and alpha/rank is folded into lora_B.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from comfymesh.diffusion.models.flow_lora import LoraKeyMap
from comfymesh.diffusion.models.tensor_source import TensorSource


def linear_keys(src: TensorSource, prefix: str = "") -> dict[str, tuple[int, int]]:
    """The 2-D `.weight` tensors of a diffusion model file (ComfyUI names, `prefix` removed): its linears."""
    out = {}
    for k in src.keys:
        if k.startswith(prefix) and k.endswith(".weight") and len(src.shape(k)) == 2:
            rows, cols = src.shape(k)
            out[k[len(prefix):]] = (rows, cols)
    return out


def kohya_lora(linears: dict[str, tuple[int, int]], rank: int = 4, alpha: float = 2.0, seed: int = 0,
               scale: float = 0.05) -> dict[str, torch.Tensor]:
    """A kohya LoRA on every linear: lora_unet_<name with underscores>.{lora_down,lora_up}.weight and .alpha."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key in sorted(linears):
        rows, cols = linears[key]
        name = "lora_unet_" + key[: -len(".weight")].replace(".", "_")
        out[f"{name}.lora_down.weight"] = scale * torch.randn(rank, cols, generator=gen)
        out[f"{name}.lora_up.weight"] = scale * torch.randn(rows, rank, generator=gen)
        out[f"{name}.alpha"] = torch.tensor(alpha)
    return out


def peft_from_kohya(kohya: dict[str, torch.Tensor], linears: dict[str, tuple[int, int]], kmap: LoraKeyMap,
                    prefix: str = "transformer.") -> dict[str, torch.Tensor]:
    """The same LoRA in diffusers' names (`prefix` + module name + .lora_A/.lora_B.weight)."""
    out: dict[str, torch.Tensor] = {}
    for key in sorted(linears):
        name = "lora_unet_" + key[: -len(".weight")].replace(".", "_")
        if f"{name}.lora_up.weight" not in kohya:
            continue
        down, up = kohya[f"{name}.lora_down.weight"], kohya[f"{name}.lora_up.weight"]
        up = up * (float(kohya[f"{name}.alpha"]) / down.shape[0])
        for module_key, part in _convert_rows(kmap, key, up).items():
            stem = prefix + module_key[: -len(".weight")]
            out[f"{stem}.lora_A.weight"] = down.clone()
            out[f"{stem}.lora_B.weight"] = part.contiguous()
    return out


def _convert_rows(kmap: LoraKeyMap, key: str, up: torch.Tensor) -> dict[str, torch.Tensor]:
    """`up` (rows of file weight `key`) under the module's names, split and ordered as the converter does."""
    if kmap.convert is None:
        return {key: up}
    state = {k: torch.empty(s, device="meta") for k, s in kmap.file_shapes.items()}
    state[key] = up
    return {k: v for k, v in kmap.convert(state).items() if v.device.type != "meta"}


def write(path: str | Path, tensors: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(dtype).contiguous() for k, v in tensors.items()}, str(out))
    return out
