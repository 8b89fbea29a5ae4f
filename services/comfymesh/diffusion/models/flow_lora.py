"""LoRA on the registered (flow) families' diffusion models: which weight a LoRA key names, and the patched
weights, as ComfyUI's key maps and offset patches make them.

Our modules are diffusers models, built from files in ComfyUI's layout by a converter that splits fused
weights (FLUX's qkv and single-block linear1, Z-Image's and SD3's qkv) and renames the rest. A LoRA key names
either a module weight (diffusers/PEFT and AI-toolkit files: `transformer.…`, `lora_transformer_…`,
`lycoris_…`) or a weight of the file (kohya's `lora_unet_…`, `diffusion_model.…`, FLUX's `…linear1_qkv`, the
first 3·width rows of linear1). A file-named key's ΔW is made at the file weight's full shape and run through
the family's converter, so a LoRA on a fused weight updates exactly the slices the converter cut (ComfyUI's
offset patches); the converter is linear in the weights (splits, renames, row swaps), so ΔW converts as W does.

Patched weights are new tensors (the cached base stays as loaded), computed as ComfyUI's patch_weight_to_device
does: W in lora_dtype (fp16 on CUDA, float32 on the CPU), each LoRA's s·ΔW added in stack order, one rounding
to W's dtype. An fp8 linear's patch is kept as a copy in the model's compute dtype (its dequantised weight plus
ΔW, row scales set to 1), not re-quantised to fp8 as ComfyUI does (stochastic rounding): exact, at the cost of
2 bytes a weight for the patched linears. The families' CLIP/T5 text encoders take ComfyUI's text-encoder
names (text_encoder_names). The patches are swapped onto the shared module around each call, under its lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.models.fp8_weights import Fp8Linear, bookkeeping, is_fp8
from comfymesh.diffusion.models.lora import Adapter
from comfymesh.diffusion.models.tensor_source import TensorSource

Converter = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
Target = tuple[str, str]  # ("module" | "file", weight key)

# LoRA key prefix → the name tables to look the rest up in, in order; "_" tables spell dots as underscores.
# ComfyUI's maps: lora_unet_ names the file's weights; transformer. / base_model.model. / lora_transformer_ /
# lycoris_ diffusers' (Qwen-Image: the same names); diffusion_model. the file's (Z-Image's also diffusers');
# bare names Qwen-Image's. We also take diffusion_model. + diffusers' and bare names on every family.
_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("lora_unet_", ("file_",)),
    ("lora_transformer_", ("module_",)),
    ("lycoris_", ("module_",)),
    ("diffusion_model.", ("file", "module")),
    ("transformer.", ("module",)),
    ("base_model.model.", ("module",)),
    ("", ("file", "module")),
)


@dataclass(frozen=True)
class LoraKeyMap:
    """What a family tells of its built model for LoRA: the file's weight keys in ComfyUI's names (the model's
    prefix removed) with their shapes, the converter from those names to the module's (None: same names), and
    LoRA-only names of row ranges of a fused weight (name → (file key, first row, rows)), and module-name
    prefixes ComfyUI's map has no diffusers names for (their diffusers-named keys are left unused, as there)."""

    file_shapes: dict[str, tuple[int, ...]]
    convert: Converter | None = None
    fused: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    unmapped_modules: tuple[str, ...] = ()
    names: dict[str, str] | None = None  # instead of the rules: LoRA name → module weight key (text encoders)


def key_map(src: TensorSource, prefix: str, convert: Converter | None = None,
            fused: dict[str, tuple[str, int, int]] | None = None, skip: Sequence[str] = ()) -> LoraKeyMap:
    """The map of a file read from its header: every tensor under `prefix` but scaled-fp8 bookkeeping and the
    `skip` keys (prefix removed), as the family's build hands them to `convert`."""
    shapes = {}
    keys = set(src.keys)
    for k in src.keys:
        if not k.startswith(prefix):
            continue
        name = k[len(prefix):]
        if name in skip or bookkeeping(k, keys):
            continue
        shapes[name] = tuple(src.shape(k))
    return LoraKeyMap(shapes, convert, fused or {})


def linear1_qkv(shapes: dict[str, tuple[int, ...]], width: int) -> dict[str, tuple[str, int, int]]:
    """FLUX/Chroma single blocks: `single_blocks.N.linear1_qkv` names linear1's q, k, v rows (ComfyUI's key)."""
    return {k[: -len(".linear1.weight")] + ".linear1_qkv": (k, 0, 3 * width)
            for k in shapes if k.startswith("single_blocks.") and k.endswith(".linear1.weight")}


class _Tables:
    def __init__(self, model: nn.Module, kmap: LoraKeyMap) -> None:
        self.names = kmap.names
        module = {k[: -len(".weight")] for k, _ in model.named_parameters()
                  if k.endswith(".weight") and not k.startswith(kmap.unmapped_modules)}
        file = {k[: -len(".weight")] for k in kmap.file_shapes if k.endswith(".weight")}
        self.tables: dict[str, dict[str, Target]] = {
            "module": {n: ("module", n + ".weight") for n in module},
            "file": {**{n: ("file", n + ".weight") for n in file}, **{n: ("file", n) for n in kmap.fused}},
        }
        for kind in ("module", "file"):
            self.tables[kind + "_"] = {n.replace(".", "_"): t for n, t in self.tables[kind].items()}

    def resolve(self, name: str) -> Target | None:
        if self.names is not None:
            return ("module", self.names[name]) if name in self.names else None
        for prefix, order in _RULES:
            if name.startswith(prefix):
                rest = name[len(prefix):]
                for table in order:
                    target = self.tables[table].get(rest)
                    if target is not None:
                        return target
        return None


def _shape(target: Target, model_shapes: dict[str, tuple[int, ...]], kmap: LoraKeyMap) -> tuple[int, ...]:
    kind, key = target
    if kind == "module":
        return model_shapes[key]
    if key in kmap.fused:
        file_key, _, rows = kmap.fused[key]
        return (rows, *kmap.file_shapes[file_key][1:])
    return kmap.file_shapes[key]


def fitting(model: nn.Module, kmap: LoraKeyMap, adapters: dict[str, Adapter]) -> set[str]:
    """The adapter names that name a weight of the model (or of its file) of a shape they fit."""
    tables = _Tables(model, kmap)
    shapes = {k: tuple(v.shape) for k, v in model.named_parameters()}
    used = set()
    for name, adapter in adapters.items():
        target = tables.resolve(name)
        if target is not None and adapter.fits(_shape(target, shapes, kmap)):
            used.add(name)
    return used


def _add(into: dict[str, torch.Tensor], key: str, delta: torch.Tensor) -> None:
    into[key] = into[key] + delta if key in into else delta


def _base_key(target: Target, kmap: LoraKeyMap) -> str:
    kind, key = target
    return kmap.fused[key][0] if kind == "file" and key in kmap.fused else key


def deltas(model: nn.Module, kmap: LoraKeyMap, stack: Sequence[tuple[dict[str, Adapter], float]],
           only: set[str] | None = None) -> tuple[dict[str, torch.Tensor], list[set[str]]]:
    """Σ strength·ΔW (float32) per module weight for a stack of (adapters, strength), and each one's used names;
    `only`: just the adapters on these module or file weights (a part of the model at a time)."""
    tables = _Tables(model, kmap)
    params = dict(model.named_parameters())
    shapes = {k: tuple(v.shape) for k, v in params.items()}
    device = next(iter(params.values())).device
    on_module: dict[str, torch.Tensor] = {}
    on_file: dict[str, torch.Tensor] = {}
    used_each = []
    for adapters, strength in stack:
        used = set()
        for name, adapter in sorted(adapters.items()):
            target = tables.resolve(name)
            if target is None:
                continue
            shape = _shape(target, shapes, kmap)
            if not adapter.fits(shape):
                continue
            used.add(name)
            if only is not None and _base_key(target, kmap) not in only:
                continue
            delta = adapter.delta(shape, device, strength)
            kind, key = target
            if kind == "module":
                _add(on_module, key, delta)
            elif key in kmap.fused:  # a row range of a fused weight: zeros elsewhere (ComfyUI's offset patch)
                file_key, first, rows = kmap.fused[key]
                whole = torch.zeros(kmap.file_shapes[file_key], device=device)
                whole[first:first + rows] = delta
                _add(on_file, file_key, whole)
            else:
                _add(on_file, key, delta)
        used_each.append(used)
    for key, delta in _converted(kmap, on_file).items():
        if not delta.any():  # a piece a partial patch (linear1_qkv) leaves alone: no copy of it
            continue
        if key not in shapes or tuple(delta.shape) != shapes[key]:
            raise ModelError(f"a LoRA weight converts to {key} {tuple(delta.shape)}, which the model does not "
                             "have in that shape")
        _add(on_module, key, delta)
    return on_module, used_each


def _converted(kmap: LoraKeyMap, on_file: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """File-named deltas under the module's names: the family's converter run on them, every other file
    tensor stood in by an empty meta tensor of its shape (the converter pops them all)."""
    if not on_file or kmap.convert is None:
        return on_file
    state: dict[str, torch.Tensor] = {k: torch.empty(s, device="meta") for k, s in kmap.file_shapes.items()}
    state.update(on_file)
    return {k: v for k, v in kmap.convert(state).items() if v.device.type != "meta"}


def text_encoder_names(role: str, model: nn.Module, roles: Sequence[str]) -> LoraKeyMap:
    """The LoRA names ComfyUI's model_lora_keys_clip gives a family's text encoder of `role` ("l", "g", "t5"),
    beside the encoders of `roles`: kohya's lora_te_/lora_te1_ (CLIP-L), lora_te2_ (CLIP-G beside CLIP-L, else
    lora_te_), lora_te<N>_ (T5: N counts the CLIPs before it; FLUX's also lora_te2_), diffusers'
    text_encoder(_2). and the generic text_encoders.<clip_l|clip_g|t5xxl>.transformer. with the module's names.
    Other encoders (Qwen3, Qwen2.5-VL): no names."""
    has_l, has_g = "l" in roles, "g" in roles
    if role == "l":
        kohya, dotted, generic = ["lora_te_", "lora_te1_"], ["text_encoder."], "clip_l"
    elif role == "g":
        kohya, dotted = (["lora_te2_"], ["text_encoder_2."]) if has_l else (["lora_te_"], ["text_encoder."])
        generic = "clip_g"
    elif role == "t5":
        index = 1 + has_l + has_g  # after CLIP-L alone (FLUX), OneTrainer's lora_te2_ and lora_te3_ both
        kohya = ["lora_te2_", "lora_te3_"] if index == 2 and has_l else [f"lora_te{index}_"]
        dotted, generic = [], "t5xxl"
    else:
        return LoraKeyMap({}, names={})
    names: dict[str, str] = {}
    for key, tensor in model.named_parameters():
        if not key.endswith(".weight") or tensor.ndim != 2:
            continue
        stem = key[: -len(".weight")]
        if role in ("l", "g") and not stem.startswith(("text_model.", "text_projection")):
            stem = "text_model." + stem  # Hugging Face's CLIP names, as LoRA files spell them
        for prefix in kohya:
            names[prefix + stem.replace(".", "_")] = key
        for prefix in dotted:
            names[prefix + stem] = key
        names[f"text_encoders.{generic}.transformer.{stem}"] = key
    return LoraKeyMap({}, names=names)


def lora_dtype(device: torch.device) -> torch.dtype:
    """The dtype ComfyUI patches weights in (model_management.lora_compute_dtype): fp16 on a CUDA GPU (where it
    computes fp16), float32 on the CPU."""
    return torch.float16 if device.type == "cuda" else torch.float32


def patched_weights(model: nn.Module, kmap: LoraKeyMap, stack: Sequence[tuple[dict[str, Adapter], float]],
                    ) -> tuple[dict[str, torch.Tensor], list[set[str]]]:
    """Override tensors patching the model with a LoRA stack, never touching its own tensors, as ComfyUI's
    patch_weight_to_device computes them: W cast to lora_dtype, each LoRA's s·ΔW (float32) added in that dtype
    in stack order, the result rounded once to W's dtype. An Fp8Linear's weight is dequantised first and kept
    patched in the model's compute dtype, its `scale` overridden by ones.

    Worked through a few weights at a time (float32 ΔW of a whole 12B model would not fit beside it); each
    module weight comes from one file weight in every family's converter, so a chunk finishes its weights."""
    tables = _Tables(model, kmap)
    params = dict(model.named_parameters())
    shapes = {k: tuple(v.shape) for k, v in params.items()}
    targets: set[tuple[str, str]] = set()
    for adapters, _ in stack:
        for name, adapter in adapters.items():
            target = tables.resolve(name)
            if target is not None and adapter.fits(_shape(target, shapes, kmap)):
                targets.add((target[0], _base_key(target, kmap)))
    file_keys = sorted(k for kind, k in targets if kind == "file")
    module_keys = sorted(k for kind, k in targets if kind == "module")
    chunks = [file_keys[i:i + _CHUNK] for i in range(0, len(file_keys), _CHUNK)]
    chunks += [module_keys[i:i + _CHUNK] for i in range(0, len(module_keys), _CHUNK)]
    out: dict[str, torch.Tensor] = {}
    used: list[set[str]] = [set() for _ in stack]
    for chunk in chunks:
        each = [deltas(model, kmap, [entry], only=set(chunk)) for entry in stack]
        for i, (_, (u,)) in enumerate(each):
            used[i] |= u
        _finish(model, params, [d for d, _ in each], out)
    return out, used


_CHUNK = 32  # file or module weights per pass


def _finish(model: nn.Module, params: Mapping[str, torch.Tensor], each: list[dict[str, torch.Tensor]],
            out: dict[str, torch.Tensor]) -> None:
    """The patched weights of the keys in `each` (one ΔW dict per LoRA of the stack, in order) into `out`
    (a key patched already, by a module-named and a file-named key at once, builds on that)."""
    compute = next((p.dtype for p in params.values() if not is_fp8(p)), torch.float32)
    for key in sorted({k for d in each for k in d}):
        weight = out.get(key, params[key])
        inter = lora_dtype(weight.device)
        owner_name = key.rpartition(".")[0]
        owner = model.get_submodule(owner_name)
        scale = owner.scale if isinstance(owner, Fp8Linear) and key == owner_name + ".weight" else None
        if key in out:
            scale = None  # already dequantised
        temp = (weight if scale is None else weight.float() * scale.float()).to(inter, copy=True)
        for d in each:
            if key in d:
                temp += d[key].to(inter)
        if scale is not None:
            out[key] = temp.to(compute)
            out[owner_name + ".scale"] = torch.ones_like(scale)
        else:
            out[key] = temp.to(weight.dtype)


@contextmanager
def swapped(model: nn.Module, overrides: dict[str, torch.Tensor]) -> Iterator[None]:
    """The model's parameters and buffers named in `overrides` replaced by them for the duration (as
    functional_call does, but around any code: the families' forwards call submodules directly)."""
    saved: list[tuple[dict[str, Any], str, Any]] = []
    try:
        for key, tensor in overrides.items():
            owner_name, _, leaf = key.rpartition(".")
            owner = model.get_submodule(owner_name)
            slots: dict[str, Any] = owner._parameters if leaf in owner._parameters else owner._buffers
            saved.append((slots, leaf, slots[leaf]))
            slots[leaf] = tensor
        yield
    finally:
        for slots, leaf, original in reversed(saved):
            slots[leaf] = original


def patched_call(fn: Callable[..., Any], model: nn.Module, overrides: dict[str, torch.Tensor]) -> Callable[..., Any]:
    """`fn` (a family's model call on `model`) running with the patched weights (none: the base) swapped in.
    Every call of one model, patched or not, takes the model's lock: the swap is on the shared module, and
    the stage runs jobs side by side (stage slots), so a job without the LoRA must not run inside another's swap."""
    lock = model_lock(model)

    def run(*args: Any, **kwargs: Any) -> Any:
        with lock, swapped(model, overrides):
            return fn(*args, **kwargs)

    return run


def model_lock(model: nn.Module) -> threading.RLock:
    """The lock every call of a cached module takes while weights may be swapped on it (LoRA views)."""
    with _locks_guard:
        return _locks.setdefault(id(model), threading.RLock())


_locks: dict[int, threading.RLock] = {}  # by id of the cached module (the cache keeps the module alive)
_locks_guard = threading.Lock()
