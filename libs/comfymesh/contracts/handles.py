"""Model handles: the small JSON values that MODEL, CLIP and VAE outputs carry between nodes and services.

A handle names model files by name and digest, never weights: `{"kind": "model", "ckpt", "digest",
"loras": [[name, digest, strength], ...]}`, plus `model_sampling` once a ModelSampling* node patched it
(the record the sampler applies); a CLIP handle adds `stop_at_clip_layer`; a VAE handle names
its checkpoint (`ckpt`) or a VAE file (`file`). The diffusion stage makes and reads them; the orchestrator
reads the checkpoint a handle names, to send the work to a replica that already holds its weights.
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


def vae_file_handle(file: str, digest: str) -> ModelHandle:
    """A handle to a VAE file of its own (models/vae)."""
    return {"kind": HandleKind.VAE.value, "file": file, "digest": digest}


def is_handle(value: Any, kind: HandleKind) -> TypeGuard[ModelHandle]:
    return isinstance(value, dict) and value.get("kind") == kind.value


def checkpoint_named(value: common_pb2.Value) -> str:
    """The checkpoint file that the handle in a wire value names; "" for any other value."""
    kind = HANDLE_TYPES.get(value.type)
    if kind is None or value.WhichOneof("payload") != "json" or not value.json:
        return ""
    handle = wirejson.loads(value.json)
    return str(handle.get("ckpt", "")) if is_handle(handle, kind) else ""


__all__ = ["HANDLE_TYPES", "HandleKind", "ModelHandle", "checkpoint_handle", "checkpoint_named", "is_handle",
           "vae_file_handle"]
