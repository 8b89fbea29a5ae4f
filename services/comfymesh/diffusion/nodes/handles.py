"""MODEL / CLIP / VAE handles (`comfymesh.contracts.handles`) turned into resident weights by the
process-wide ModelCache, after checking that the files they name are still the ones they were made from.

Every node reads handles through these helpers, so a handle to a whole checkpoint and one to the split
loaders' files (a diffusion model, text encoders, a VAE) work wherever the other does."""

from __future__ import annotations

import json
from collections.abc import Hashable
from typing import Any

from comfymesh.contracts.errors import ModelError, NodeInputError
from comfymesh.contracts.handles import HandleKind, ModelHandle, is_handle
from comfymesh.diffusion.models.cache import LoadedCheckpoint, LoraSpec, get_model_cache
from comfymesh.diffusion.nodes.model_files import resolve_file
from comfymesh.stage.node import NodeContext


def checkpoint_of(ctx: NodeContext, handle: ModelHandle) -> LoadedCheckpoint:
    """The resident weights a MODEL, CLIP or VAE handle names: its checkpoint, or its split files."""
    cache = get_model_cache()
    if "unet_file" in handle:
        path = resolve_file(ctx, "diffusion_models", handle["unet_file"], handle["digest"])
        _check_unchanged(ctx, handle, cache.digest(path), f"diffusion model {handle['unet_file']}")
        return cache.unet_file(path, handle.get("weight_dtype", "default"))
    if "clip_files" in handle:
        names = handle["clip_files"]
        digests = str(handle["digest"]).split("+")
        expected = digests if len(digests) == len(names) else [None] * len(names)
        paths = [resolve_file(ctx, "text_encoders", name, digest) for name, digest in zip(names, expected, strict=True)]
        _check_unchanged(ctx, handle, "+".join(cache.digest(p) for p in paths),
                         f"text encoder {' / '.join(handle['clip_files'])}")
        return cache.text_encoder_files(paths, handle["type"])
    ckpt = cache.get(resolve_file(ctx, "checkpoints", handle["ckpt"], handle["digest"]))
    _check_unchanged(ctx, handle, ckpt.digest, f"checkpoint {handle['ckpt']}")
    return ckpt


def _check_unchanged(ctx: NodeContext, handle: ModelHandle, digest: str, what: str) -> None:
    if digest != handle["digest"]:
        raise ModelError(f"{what} changed on disk since it was loaded (expected sha256 {handle['digest']}, got "
                         f"{digest}); run the loader again", node_id=ctx.node_id)


def loras_of(ctx: NodeContext, handle: ModelHandle) -> list[LoraSpec]:
    out = []
    for name, digest, strength in handle.get("loras", []):
        path = resolve_file(ctx, "loras", name, digest)
        actual = get_model_cache().digest(path)
        if actual != digest:
            raise ModelError(f"LoRA {name} changed on disk since it was loaded (expected sha256 {digest}, got "
                             f"{actual})", node_id=ctx.node_id)
        out.append((path, float(strength)))
    return out


def weights_identity(model: ModelHandle) -> Hashable:
    """Same model files (and weight dtype), LoRA patches, model sampling and model patches ⇔ same denoiser."""
    return (model["digest"], model.get("weight_dtype", "default"),
            tuple((digest, float(strength)) for _, digest, strength in model["loras"]),
            tuple(sorted((model.get("model_sampling") or {}).items())),
            json.dumps(model.get("model_patches") or [], sort_keys=True))


def expect_handle(ctx: NodeContext, handle: Any, kind: HandleKind) -> ModelHandle:
    if not is_handle(handle, kind):
        raise NodeInputError(f"expected a {kind.upper()} input, got {type(handle).__name__}", node_id=ctx.node_id)
    return handle
