"""Kohya/LDM LoRA files as weight patches: W' = W + strength·(alpha/rank)·up·down, computed on copies.

UNet keys may name modules the diffusers way (`lora_unet_down_blocks_0_…`) or the LDM way
(`lora_unet_input_blocks_1_1_…`); text encoder keys are `lora_te_` (SD1/SD2), `lora_te1_`/`lora_te2_`
(SDXL CLIP-L / CLIP-G), named after Hugging Face CLIP modules.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from comfymesh.contracts.errors import ModelError, NodeInputError

log = logging.getLogger(__name__)

SUFFIXES = (".lora_up.weight", ".lora_down.weight", ".alpha")


@dataclass
class LoraPair:
    up: torch.Tensor
    down: torch.Tensor
    alpha: float | None

    def delta(self, shape: torch.Size) -> torch.Tensor:
        rank = self.down.shape[0]
        scale = (self.alpha / rank) if self.alpha is not None else 1.0
        up, down = self.up.float().flatten(1), self.down.float().flatten(1)
        return (up @ down).reshape(shape) * scale


def read_lora(path: Path) -> dict[str, LoraPair]:
    """The LoRA pairs of a file, by kohya module name; ModelError for unreadable files."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise ModelError(f"LoRA file {path.name} is not a readable .safetensors file: {exc}") from exc
    names = {k[: -len(s)] for k in tensors for s in SUFFIXES if k.endswith(s)}
    pairs = {}
    for name in sorted(names):
        up, down = tensors.get(name + ".lora_up.weight"), tensors.get(name + ".lora_down.weight")
        if up is None or down is None:
            continue
        alpha = tensors.get(name + ".alpha")
        pairs[name] = LoraPair(up, down, float(alpha) if alpha is not None else None)
    return pairs


def module_lookup(model: nn.Module, prefix: str, extra: dict[str, str] | None = None,
                  add_text_model: bool = False) -> dict[str, str]:
    """kohya name → module name for every module with a weight, plus names from `extra` (LDM → ours)."""
    table: dict[str, str] = {}
    for name, module in model.named_modules():
        if getattr(module, "weight", None) is None or not name:
            continue
        hf = name if (not add_text_model or name.startswith("text_model.")) else "text_model." + name
        table[prefix + hf.replace(".", "_")] = name
    for ldm, ours in (extra or {}).items():
        table.setdefault(prefix + ldm.replace(".", "_"), ours)
    return table


def _fits(pair: LoraPair, weight: torch.Tensor) -> bool:
    return pair.up.shape[0] == weight.shape[0] and pair.down.flatten(1).shape[1] == weight[0].numel()


def fitting(model: nn.Module, lookup: dict[str, str], pairs: dict[str, LoraPair]) -> set[str]:
    """The LoRA names that name a module of `model` with a weight of the right shape."""
    params = dict(model.named_parameters())
    out = set()
    for name, pair in pairs.items():
        module = lookup.get(name)
        if module is not None and module + ".weight" in params and _fits(pair, params[module + ".weight"]):
            out.add(name)
    return out


def patch_weights(model: nn.Module, lookup: dict[str, str], pairs: dict[str, LoraPair], strength: float,
                  base: dict[str, torch.Tensor] | None = None) -> tuple[dict[str, torch.Tensor], set[str]]:
    """New weight tensors for the modules the LoRA names (never touching the model's own tensors).

    `base` holds already patched weights to stack on (several LoRAs). Returns (patched, used names).
    """
    patched = dict(base or {})
    used = fitting(model, lookup, pairs)
    params = dict(model.named_parameters())
    for name in sorted(used):
        pair = pairs[name]
        key = lookup[name] + ".weight"
        weight = patched.get(key, params[key])
        patched[key] = (weight.float() + strength * pair.delta(weight.shape).to(weight.device)).to(weight.dtype)
    return patched, used


def check_fit(file_name: str, pairs: dict[str, LoraPair], used: set[str]) -> None:
    if pairs and not used:
        sample = ", ".join(sorted(pairs)[:3])
        raise NodeInputError(f"LoRA {file_name} fits no layer of this model (keys like {sample})")
    if not pairs:
        raise NodeInputError(f"LoRA {file_name} holds no lora_up/lora_down pairs")
    unused = set(pairs) - used
    if unused:
        log.warning("LoRA %s: %d of %d keys fit no layer (e.g. %s)", file_name, len(unused), len(pairs),
                    sorted(unused)[0])
