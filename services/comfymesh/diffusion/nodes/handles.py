"""MODEL / CLIP / VAE handles (`comfymesh.contracts.handles`) turned into resident weights by the
process-wide ModelCache, after checking that the files they name are still the ones they were made from."""

from __future__ import annotations

from typing import Any

from comfymesh.contracts.errors import ModelError, NodeInputError
from comfymesh.contracts.handles import HandleKind, ModelHandle, is_handle
from comfymesh.diffusion.models.cache import LoadedCheckpoint, LoraSpec, get_model_cache
from comfymesh.diffusion.nodes.model_files import resolve_file
from comfymesh.stage.node import NodeContext


def checkpoint_of(ctx: NodeContext, handle: ModelHandle) -> LoadedCheckpoint:
    ckpt = get_model_cache().get(resolve_file(ctx, "checkpoints", handle["ckpt"]))
    if ckpt.digest != handle["digest"]:
        raise ModelError(f"checkpoint {handle['ckpt']} changed on disk since it was loaded; run the loader again",
                         node_id=ctx.node_id)
    return ckpt


def loras_of(ctx: NodeContext, handle: ModelHandle) -> list[LoraSpec]:
    out = []
    for name, digest, strength in handle.get("loras", []):
        path = resolve_file(ctx, "loras", name)
        if get_model_cache().digest(path) != digest:
            raise ModelError(f"LoRA {name} changed on disk since it was loaded", node_id=ctx.node_id)
        out.append((path, float(strength)))
    return out


def expect_handle(ctx: NodeContext, handle: Any, kind: HandleKind) -> ModelHandle:
    if not is_handle(handle, kind):
        raise NodeInputError(f"expected a {kind.upper()} input, got {type(handle).__name__}", node_id=ctx.node_id)
    return handle
