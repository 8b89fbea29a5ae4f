"""Model handles: the small JSON values that MODEL, CLIP and VAE outputs carry between nodes and services.

A handle names model files by name and digest, never weights: `{"kind": "model", "ckpt", "digest",
"loras": [[name, digest, strength], ...]}`, plus `model_sampling` once a ModelSampling* node patched it
(the record the sampler applies); a CLIP handle adds `stop_at_clip_layer`; a VAE handle names
its checkpoint (`ckpt`) or a VAE file (`file`). The split loaders' handles name their files instead of `ckpt`:
a MODEL handle `unet_file` (models/diffusion_models) with its `weight_dtype`, a CLIP handle `clip_files`
(models/text_encoders) with the loader's `type` and `digest` their digests joined by "+".
The diffusion stage makes and reads them; the orchestrator reads the model file a handle names
(`checkpoint_named`), to send the work to a replica that already holds its weights.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, TypeGuard

from comfymesh.contracts import wirejson
from comfymesh.v1 import common_pb2

ModelHandle = dict[str, Any]


class HandleKind(StrEnum):
    MODEL = "model"
    CLIP = "clip"
    VAE = "vae"


# the ComfyUI type of each kind's values
HANDLE_TYPES = {"MODEL": HandleKind.MODEL, "CLIP": HandleKind.CLIP, "VAE": HandleKind.VAE}


def checkpoint_handle(kind: HandleKind, ckpt: str, digest: str, **fields: Any) -> ModelHandle:
    """A handle to one part (`kind`) of a checkpoint file."""
    return {"kind": kind.value, "ckpt": ckpt, "digest": digest, **fields}


def unet_file_handle(file: str, digest: str, weight_dtype: str) -> ModelHandle:
    """A MODEL handle to a diffusion-model file of its own (UNETLoader)."""
    return {"kind": HandleKind.MODEL.value, "unet_file": file, "digest": digest, "weight_dtype": weight_dtype,
            "loras": []}


def clip_files_handle(files: list[str], digest: str, clip_type: str) -> ModelHandle:
    """A CLIP handle to text encoder files of their own (CLIPLoader, DualCLIPLoader)."""
    return {"kind": HandleKind.CLIP.value, "clip_files": list(files), "type": clip_type, "digest": digest,
            "loras": [], "stop_at_clip_layer": None}


def model_file_named(handle: ModelHandle) -> str:
    """The file that places a handle's weights on a replica: its checkpoint, diffusion model or first text
    encoder ("" for a VAE file of its own, small enough to load anywhere)."""
    for key in ("ckpt", "unet_file"):
        if handle.get(key):
            return str(handle[key])
    files = handle.get("clip_files") or [""]
    return str(files[0])


def vae_file_handle(file: str, digest: str) -> ModelHandle:
    """A handle to a VAE file of its own (models/vae)."""
    return {"kind": HandleKind.VAE.value, "file": file, "digest": digest}


def is_handle(value: Any, kind: HandleKind) -> TypeGuard[ModelHandle]:
    return isinstance(value, dict) and value.get("kind") == kind.value


def checkpoint_named(value: common_pb2.Value) -> str:
    """The model file that the handle in a wire value names (`model_file_named`); "" for any other value."""
    kind = HANDLE_TYPES.get(value.type)
    if kind is None or value.WhichOneof("payload") != "json" or not value.json:
        return ""
    handle = wirejson.loads(value.json)
    return model_file_named(handle) if is_handle(handle, kind) else ""


__all__ = ["HANDLE_TYPES", "HandleKind", "ModelHandle", "checkpoint_handle", "checkpoint_named", "clip_files_handle",
           "is_handle", "model_file_named", "unet_file_handle", "vae_file_handle"]
