"""LoRA files as weight patches: W' = W + strength·(alpha/rank)·up·down, computed on copies.

A file's adapters are read in the forms ComfyUI accepts: LoRA pairs as kohya writes them (`lora_up`/`lora_down`),
PEFT/diffusers (`lora_B`/`lora_A`, AI-toolkit's FLUX files too) and older diffusers spellings, LoHa (`hada_*`)
and LoKr (`lokr_*`). For the SD UNets, keys may name modules the diffusers way (`lora_unet_down_blocks_0_…`) or
the LDM way (`lora_unet_input_blocks_1_1_…`); text encoder keys are `lora_te_` (SD1/SD2), `lora_te1_`/`lora_te2_`
(SDXL CLIP-L / CLIP-G), named after Hugging Face CLIP modules. The flow families' names: models.flow_lora.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from comfymesh.contracts.errors import ModelError, NodeInputError

log = logging.getLogger(__name__)

# (up, down) suffixes of one LoRA pair, in ComfyUI's order of precedence: kohya, older diffusers, PEFT, ...
PAIR_SUFFIXES = ((".lora_up.weight", ".lora_down.weight"), ("_lora.up.weight", "_lora.down.weight"),
                 (".lora_B.weight", ".lora_A.weight"), (".lora.up.weight", ".lora.down.weight"),
                 (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight"),
                 (".lora_B.default.weight", ".lora_A.default.weight"))
LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
LOKR = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")


def _numel(shape: Sequence[int]) -> int:
    out = 1
    for n in shape:
        out *= n
    return out


def _scale(alpha: float | None, rank: int | None) -> float:
    return alpha / rank if alpha is not None and rank else 1.0


@dataclass
class LoraPair:
    up: torch.Tensor
    down: torch.Tensor
    alpha: float | None

    def delta(self, shape: Sequence[int], device: torch.device | None = None, strength: float = 1.0) -> torch.Tensor:
        """strength·ΔW at `shape` in float32, computed on `device` (the weight's: a GPU multiplies the factors
        there); the product scaled by strength·alpha/rank in one multiplication, as ComfyUI does."""
        up, down = self.up.to(device, torch.float32).flatten(1), self.down.to(device, torch.float32).flatten(1)
        return (strength * _scale(self.alpha, self.down.shape[0])) * (up @ down).reshape(tuple(shape))

    def fits(self, shape: Sequence[int]) -> bool:
        return self.up.shape[0] == shape[0] and self.down.flatten(1).shape[1] == _numel(shape[1:])

    def nbytes(self) -> int:
        return self.up.numel() * self.up.element_size() + self.down.numel() * self.down.element_size()


@dataclass
class LoHa:
    """LyCORIS' Hadamard product: ΔW = (w1_a·w1_b) ⊙ (w2_a·w2_b) · alpha/rank (rank: w1_b's rows)."""

    w1a: torch.Tensor
    w1b: torch.Tensor
    w2a: torch.Tensor
    w2b: torch.Tensor
    alpha: float | None

    def delta(self, shape: Sequence[int], device: torch.device | None = None, strength: float = 1.0) -> torch.Tensor:
        def f(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, torch.float32)
        m1 = f(self.w1a) @ f(self.w1b)
        m2 = f(self.w2a) @ f(self.w2b)
        return (strength * _scale(self.alpha, self.w1b.shape[0])) * (m1 * m2).reshape(tuple(shape))

    def fits(self, shape: Sequence[int]) -> bool:
        return self.w1a.shape[0] == shape[0] and self.w1b.shape[1] == _numel(shape[1:])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.w1a, self.w1b, self.w2a, self.w2b))


@dataclass
class LoKr:
    """LyCORIS' Kronecker product: ΔW = w1 ⊗ w2, each factor whole or a product a·b; scaled by alpha/rank only
    when a factor is decomposed (rank: its b's rows, w1's first), as ComfyUI does."""

    w1: tuple[torch.Tensor, ...]  # (w1,) or (w1_a, w1_b)
    w2: tuple[torch.Tensor, ...]
    alpha: float | None

    @staticmethod
    def _whole(parts: tuple[torch.Tensor, ...], device: torch.device | None) -> torch.Tensor:
        f = [p.to(device, torch.float32) for p in parts]
        return f[0] if len(f) == 1 else f[0] @ f[1]

    def _dims(self) -> tuple[int, int]:
        def rc(parts: tuple[torch.Tensor, ...]) -> tuple[int, int]:
            return (parts[0].shape[0], _numel(parts[-1].shape[1:]))
        (r1, c1), (r2, c2) = rc(self.w1), rc(self.w2)
        return r1 * r2, c1 * c2

    def delta(self, shape: Sequence[int], device: torch.device | None = None, strength: float = 1.0) -> torch.Tensor:
        rank = self.w1[1].shape[0] if len(self.w1) == 2 else self.w2[1].shape[0] if len(self.w2) == 2 else None
        w2 = self._whole(self.w2, device).flatten(1)
        return (strength * _scale(self.alpha, rank)) * torch.kron(self._whole(self.w1, device), w2).reshape(tuple(shape))

    def fits(self, shape: Sequence[int]) -> bool:
        return self._dims() == (shape[0], _numel(shape[1:]))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.w1, *self.w2))


Adapter = LoraPair | LoHa | LoKr


def adapters_of(tensors: dict[str, torch.Tensor]) -> dict[str, Adapter]:
    """The adapters of a LoRA file's tensors, by the module name their keys share (suffixes removed)."""
    out: dict[str, Adapter] = {}

    def alpha(name: str) -> float | None:
        a = tensors.get(name + ".alpha")
        return float(a) if a is not None else None

    for key in sorted(tensors):
        for up_sfx, down_sfx in PAIR_SUFFIXES:
            if key.endswith(up_sfx):
                name = key[: -len(up_sfx)]
                down = tensors.get(name + down_sfx)
                if down is not None and name not in out:
                    out[name] = LoraPair(tensors[key], down, alpha(name))
                break
        name, _, leaf = key.rpartition(".")
        # (Tucker-decomposed conv LoHa / LoKr, with t1/t2 factors, are not taken)
        if (leaf == "hada_w1_a" and name not in out and f"{name}.hada_t1" not in tensors
                and all(f"{name}.{n}" in tensors for n in LOHA)):
            w = [tensors[f"{name}.{n}"] for n in LOHA]
            out[name] = LoHa(w[0], w[1], w[2], w[3], alpha(name))
        if leaf in ("lokr_w1", "lokr_w1_a") and name not in out and f"{name}.lokr_t2" not in tensors:
            w1 = _factor(tensors, name, "lokr_w1")
            w2 = _factor(tensors, name, "lokr_w2")
            if w1 is not None and w2 is not None:
                out[name] = LoKr(w1, w2, alpha(name))
    return out


def _factor(tensors: dict[str, torch.Tensor], name: str, stem: str) -> tuple[torch.Tensor, ...] | None:
    whole = tensors.get(f"{name}.{stem}")
    if whole is not None:
        return (whole,)
    a, b = tensors.get(f"{name}.{stem}_a"), tensors.get(f"{name}.{stem}_b")
    return (a, b) if a is not None and b is not None else None


def read_lora(path: Path) -> dict[str, Adapter]:
    """The adapters of a file, by module name as the file spells it; ModelError for unreadable files."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise ModelError(f"LoRA file {path.name} is not a readable .safetensors file: {exc}") from exc
    return adapters_of(tensors)


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


def fitting(model: nn.Module, lookup: dict[str, str], pairs: dict[str, Adapter]) -> set[str]:
    """The LoRA names that name a module of `model` with a weight of the right shape."""
    params = dict(model.named_parameters())
    out = set()
    for name, pair in pairs.items():
        module = lookup.get(name)
        if module is not None and module + ".weight" in params and pair.fits(params[module + ".weight"].shape):
            out.add(name)
    return out


def patch_weights(model: nn.Module, lookup: dict[str, str], pairs: dict[str, Adapter], strength: float,
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
        patched[key] = (weight.float() + strength * pair.delta(weight.shape, weight.device)).to(weight.dtype)
    return patched, used


def check_fit(file_name: str, pairs: dict[str, Adapter], used: set[str]) -> None:
    if pairs and not used:
        sample = ", ".join(sorted(pairs)[:3])
        raise NodeInputError(f"LoRA {file_name} fits no layer of this model (keys like {sample})")
    if not pairs:
        raise NodeInputError(f"LoRA {file_name} holds no LoRA, LoHa or LoKr weights")
    unused = set(pairs) - used
    if unused:
        log.warning("LoRA %s: %d of %d keys fit no layer (e.g. %s)", file_name, len(unused), len(pairs),
                    sorted(unused)[0])
