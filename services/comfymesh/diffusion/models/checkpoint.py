"""Load a single-file checkpoint, or the separate files of the split loaders (a diffusion model, text encoders,
a VAE): recognise each, then build its modules."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.families import registry as families
from comfymesh.diffusion.models.convert import Placement, build_clip, build_unet, build_vae, unet_module_map
from comfymesh.diffusion.models.flow_lora import LoraKeyMap
from comfymesh.diffusion.models.flux2_vae import load_flux2_vae, parse_flux2_vae
from comfymesh.diffusion.models.recognise import (
    VAE_PREFIX,
    ClipLayout,
    Recognition,
    found_summary,
    parse_vae,
    recognise,
)
from comfymesh.diffusion.models.split_files import recognise_unet_file
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.models.wan_vae import load_wan21_vae, parse_wan21_vae
from comfymesh.logs import log_fields

log = logging.getLogger(__name__)


@dataclass
class CheckpointParts:
    """The modules of one checkpoint, or of one split file (a diffusion model: no VAE, no text encoders;
    text encoders: no recognition, UNet or VAE)."""

    recognition: Recognition | None
    unet: torch.nn.Module | None
    vae: torch.nn.Module | None
    clips: dict[str, torch.nn.Module] = field(default_factory=dict)  # role → module
    unet_modules: dict[str, str] = field(default_factory=dict)  # LDM → diffusers module names
    family: str = ""  # text encoders without a UNet: the family their files make
    lora_map: LoraKeyMap | None = None  # a registered family's LoRA key map; None: the UNet path or no LoRA


def load_checkpoint(path: Path, place: Placement | None = None) -> CheckpointParts:
    """Recognise and build every part of a single-file checkpoint; ModelError on anything unusable."""
    place = place or Placement()
    if not path.is_file():
        raise ModelError(f"checkpoint file {path} does not exist")
    src = TensorSource(path)
    found = families.recognise(src)
    if found is not None:
        return load_family_checkpoint(src, *found, place)
    rec = recognise(src)
    assert rec.vae is not None
    clock = [time.perf_counter()]

    def lap() -> float:
        clock.append(time.perf_counter())
        return round(clock[-1] - clock[-2], 2)

    try:
        unet = build_unet(src, rec, place)
        unet_s = lap()
        vae = build_vae(src, rec.vae, VAE_PREFIX, place)
        vae_s = lap()
        clips = {c.role: build_clip(src, c, place) for c in rec.clips}
        clip_s = lap()
        modules = unet_module_map(src, rec)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{path.name}: {rec.family} checkpoint could not be converted: {exc}") from exc
    for m in (unet, vae, *clips.values()):
        m.eval().requires_grad_(False)
        if any(t.is_meta for t in (*m.parameters(), *m.buffers())):
            raise ModelError(f"{path.name}: some weights were not found in the file")
    # where load time goes (first loads include importing diffusers/transformers)
    log.info("checkpoint built", extra=log_fields(file=path.name, family=rec.family, device=str(place.device),
                                                  unet_s=unet_s, vae_s=vae_s, clip_s=clip_s))
    return CheckpointParts(rec, unet, vae, clips, modules)


def load_family_checkpoint(src: TensorSource, family: families.DiffusionFamily, layout: object,
                           place: Placement) -> CheckpointParts:
    """An all-in-one checkpoint of a registered family (SD3.5's: model.diffusion_model., text_encoders.,
    first_stage_model.): its diffusion model, VAE, and the text encoders the family finds in it."""
    vae_prefix = getattr(family, "checkpoint_vae_prefix", VAE_PREFIX)  # FLUX's checkpoints: `vae.`
    vae_layout = parse_vae(src, vae_prefix)
    if vae_layout is None:
        raise ModelError(f"{src.path.name}: no VAE ({vae_prefix}*) in the {family.name} checkpoint")
    built = family.build(src, layout, place.device, None)
    try:
        vae = build_vae(src, vae_layout, vae_prefix, place).eval().requires_grad_(False)
    except Exception as exc:
        raise ModelError(f"{src.path.name}: the checkpoint's VAE could not be converted: {exc}") from exc
    encoders = getattr(family, "load_checkpoint_encoders", None)
    clips = encoders(src, place.device) if encoders is not None else {}
    return CheckpointParts(built.recognition, built.module, vae, clips, built.unet_modules, family=family.name,
                           lora_map=built.lora_map)


def load_vae_file(path: Path, place: Placement | None = None) -> torch.nn.Module:
    """A standalone VAE file (LDM or diffusers naming, with or without `first_stage_model.`)."""
    if not path.is_file():
        raise ModelError(f"VAE file {path} does not exist")
    src = TensorSource(path)
    if parse_wan21_vae(src) is not None:  # Qwen-Image's VAE (Wan 2.1's network, 5-D latents)
        return load_wan21_vae(src, (place or Placement()).device)
    prefix = VAE_PREFIX if any(k.startswith(VAE_PREFIX) for k in src.keys) else ""
    flux2 = parse_flux2_vae(src, prefix)
    if flux2 is not None:  # FLUX.2's VAE: 128-channel patchified, batch-normalised latents
        place = place or Placement()
        return load_flux2_vae(src, flux2, place.device, place.vae_dtype)
    layout = parse_vae(src, prefix)
    if layout is None:
        raise ModelError(f"{path.name} is not a VAE: found {found_summary(src)}")
    try:
        vae = build_vae(src, layout, prefix, place or Placement())
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{path.name}: VAE could not be converted: {exc}") from exc
    return vae.eval().requires_grad_(False)


# UNETLoader's weight_dtype: the dtype the diffusion model's weights are held in (None: the placement's)
WEIGHT_DTYPES: dict[str, torch.dtype | None] = {
    "default": None, "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e4m3fn_fast": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}


def load_unet_file(path: Path, place: Placement | None = None, weight_dtype: str = "default") -> CheckpointParts:
    """A diffusion-model file (UNETLoader); an fp8 `weight_dtype` rounds every weight to that format, computed
    in the placement's dtype."""
    place = place or Placement()
    if not path.is_file():
        raise ModelError(f"diffusion model file {path} does not exist")
    src = TensorSource(path)
    found = families.recognise(src)
    if found is not None:
        family, layout = found
        built = family.build(src, layout, place.device, WEIGHT_DTYPES[weight_dtype])
        return CheckpointParts(built.recognition, built.module, None, {}, built.unet_modules,
                               lora_map=built.lora_map)
    rec, prefix = recognise_unet_file(src)
    try:
        unet = build_unet(src, rec, place, prefix)
        modules = unet_module_map(src, rec, prefix)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{path.name}: {rec.family} diffusion model could not be converted: {exc}") from exc
    unet.eval().requires_grad_(False)
    storage = WEIGHT_DTYPES[weight_dtype]
    if storage is not None:
        with torch.no_grad():
            for tensor in (*unet.parameters(), *unet.buffers()):
                if tensor.is_floating_point():
                    tensor.copy_(tensor.to(storage).to(tensor.dtype))
    return CheckpointParts(rec, unet, None, {}, modules)


def load_text_encoders(family: str, layouts: dict[str, tuple[TensorSource, ClipLayout]],
                       place: Placement | None = None) -> CheckpointParts:
    """Text encoder files (CLIPLoader / DualCLIPLoader) of `family`, one per role."""
    place = place or Placement()
    clips: dict[str, torch.nn.Module] = {}
    for role, (src, layout) in layouts.items():
        try:
            clips[role] = build_clip(src, layout, place).eval().requires_grad_(False)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"{src.path.name}: text encoder could not be converted: {exc}") from exc
    return CheckpointParts(None, None, None, clips, family=family)


def load_family_encoders(family: families.DiffusionFamily, clip_type: str, paths: list[Path],
                         place: Placement | None = None) -> CheckpointParts:
    """A registered family's text encoder files (CLIPLoader and friends with one of its `clip_types`)."""
    clips = family.load_text_encoders(clip_type, paths, (place or Placement()).device)
    return CheckpointParts(None, None, None, clips, family=family.name)
