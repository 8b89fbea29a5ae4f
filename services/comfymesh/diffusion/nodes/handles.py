"""MODEL / CLIP / VAE handles: small deterministic JSON values naming files by name and digest, which the
process-wide ModelCache turns into resident weights."""

from __future__ import annotations

from typing import Any

from comfymesh.diffusion.models.cache import LoadedCheckpoint, LoraSpec, get_model_cache
from comfymesh.diffusion.nodes.model_files import resolve_file
from comfymesh.errors import ModelError, NodeInputError
from comfymesh.stage.node import NodeContext

Handle = dict[str, Any]


def checkpoint_of(ctx: NodeContext, handle: Handle) -> LoadedCheckpoint:
    ckpt = get_model_cache().get(resolve_file(ctx, "checkpoints", handle["ckpt"]))
    if ckpt.digest != handle["digest"]:
        raise ModelError(f"checkpoint {handle['ckpt']} changed on disk since it was loaded; run the loader again",
                         node_id=ctx.node_id)
    return ckpt


def loras_of(ctx: NodeContext, handle: Handle) -> list[LoraSpec]:
    out = []
    for name, digest, strength in handle.get("loras", []):
        path = resolve_file(ctx, "loras", name)
        if get_model_cache().digest(path) != digest:
            raise ModelError(f"LoRA {name} changed on disk since it was loaded", node_id=ctx.node_id)
        out.append((path, float(strength)))
    return out


def expect_handle(ctx: NodeContext, handle: Any, kind: str) -> Handle:
    if not isinstance(handle, dict) or handle.get("kind") != kind:
        raise NodeInputError(f"expected a {kind.upper()} input, got {type(handle).__name__}", node_id=ctx.node_id)
    return handle
