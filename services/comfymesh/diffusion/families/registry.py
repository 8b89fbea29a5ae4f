"""One home per diffusion-model family that is not an SD-style UNet: a `DiffusionFamily` object per module of
this package says how to recognise, build, sample and prompt its models, and the stage's loaders, cache and
nodes ask the registry instead of naming families.

SD1/SD2/SDXL stay on the UNet code path (models.recognise / convert): they are the families this registry does
not hold, so `get` answers None for them. Each module of this package (but this one) exposing `FAMILY` is
registered on first use, so a new family is one new file.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    import torch

    from comfymesh.contracts.handles import ModelHandle
    from comfymesh.diffusion.latents.formats import LatentFormat
    from comfymesh.diffusion.models.flow_lora import LoraKeyMap
    from comfymesh.diffusion.models.recognise import Recognition
    from comfymesh.diffusion.models.tensor_source import TensorSource
    from comfymesh.diffusion.sampling.ksampler import SamplingModel

VaeKind = Literal["sd4", "flux16", "other"]  # 4-channel SD VAE, FLUX's 16-channel ae, anything else
Conditioning = list[list[Any]]  # ComfyUI's [[tensor [1, T, D], extras (pooled_output, attention_mask, ...)], ...]


@dataclass
class BuiltModel:
    """A family's diffusion model as the cache keeps it: what sampling reads of the file, and the module."""

    recognition: Recognition
    module: torch.nn.Module
    unet_modules: dict[str, str] = field(default_factory=dict)  # file → module names, for LoRA (empty: none)
    lora_map: LoraKeyMap | None = None  # how LoRA keys name its weights (models.flow_lora); None: no LoRA


class UnsupportedSampling(Exception):
    """A ModelSampling* patch this family cannot take; the message says what to use instead."""


class DiffusionFamily(Protocol):
    """Everything the diffusion stage needs to know of one model family (see architecture.md)."""

    name: str  # the family name handles, Recognition and SamplingModel carry
    clip_types: tuple[str, ...]  # CLIPLoader / DualCLIPLoader / TripleCLIPLoader `type` values it serves
    latent_format: LatentFormat
    vae_kind: VaeKind
    batches: bool  # may jobs' calls share one model call in the cross-job batcher
    fast_path: bool  # its model call runs on the fast path: it then has static_form(module) → fast.denoiser.StaticForm
    lora: bool  # LoRA patches apply to its diffusion model (its BuiltModel gives a lora_map)

    def recognise(self, src: TensorSource) -> Any | None:
        """The family's layout of a diffusion-model file, read from keys and shapes; None if not this family,
        ModelError if it is one the stage cannot build."""
        ...

    def build(self, src: TensorSource, layout: Any, device: torch.device,
              weight_dtype: torch.dtype | None) -> BuiltModel:
        """The model of `src` on `device`; a `weight_dtype` (UNETLoader's fp8 choices) rounds weights to it."""
        ...

    def sampling_model(self, module: torch.nn.Module, rec: Recognition, device: torch.device) -> SamplingModel:
        """The denoiser's view of a built model with the family's default model sampling."""
        ...

    def load_text_encoders(self, clip_type: str, paths: list[Path], device: torch.device) -> dict[str, Any]:
        """Role → text encoder module for a CLIP loader's files; ModelError naming what the files hold."""
        ...

    def encode(self, text: str, encoders: dict[str, Any], clip: ModelHandle) -> Conditioning:
        """CLIPTextEncode's conditioning entries for one prompt, with ComfyUI's extras."""
        ...

    def model_sampling(self, record: dict[str, Any], sm: SamplingModel) -> SamplingModel:
        """`sm` as a ModelSampling* node's handle record asks; UnsupportedSampling if it does not apply."""
        ...


def flow_shift_sampling(record: dict[str, Any], sm: SamplingModel) -> SamplingModel:
    """ModelSamplingSD3 / AuraFlow on a flow model: its σ table with the node's shift and multiplier; the
    other records refused (the families taking ModelSamplingFlux write their own)."""
    from comfymesh.diffusion.sampling.flow_sampling import FlowModelSampling

    if record["kind"] == "flow":
        return dataclasses.replace(sm, sampling=FlowModelSampling(record["shift"], record["multiplier"]))
    what = "ModelSamplingFlux" if record["kind"] == "flux" else f"ModelSamplingDiscrete {record['sampling']!r}"
    raise UnsupportedSampling(f"{what} on the {sm.family} flow model is not supported yet: use "
                              "ModelSamplingAuraFlow or ModelSamplingSD3")


_families: dict[str, DiffusionFamily] = {}
_lock = threading.Lock()


def _registered() -> dict[str, DiffusionFamily]:
    # imported on first use: family modules import the model code, which imports this registry
    with _lock:
        if not _families:
            package = __name__.rpartition(".")[0]
            found: dict[str, DiffusionFamily] = {}
            for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
                if info.name == "registry":
                    continue
                family = getattr(importlib.import_module(f"{package}.{info.name}"), "FAMILY", None)
                if family is None:
                    continue
                if family.name in found:
                    raise RuntimeError(f"two diffusion families named {family.name!r}")
                found[family.name] = family
            _families.update(sorted(found.items()))
        return _families


def families() -> list[DiffusionFamily]:
    """Every registered family, by name."""
    return list(_registered().values())


def get(name: str) -> DiffusionFamily | None:
    """The family of that name; None for the UNet families (SD1/SD2/SDXL), which the UNet code path serves."""
    return _registered().get(name)


def for_clip_type(clip_type: str) -> DiffusionFamily | None:
    """The family serving a CLIP loader `type`; None for the UNet families' types."""
    return next((f for f in _registered().values() if clip_type in f.clip_types), None)


def recognise(src: TensorSource) -> tuple[DiffusionFamily, Any] | None:
    """The family and layout of a diffusion-model file, None when no registered family claims it."""
    for family in _registered().values():
        layout = family.recognise(src)
        if layout is not None:
            return family, layout
    return None
