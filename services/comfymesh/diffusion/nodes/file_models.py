"""Handles to models of their own file (UPSCALE_MODEL, CLIP_VISION, STYLE_MODEL): `{"kind", "file",
"digest"}`, made by a loader node and turned into the resident model, on the cache's device, by the nodes
that use them, after checking that the file is still the one the loader read."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from comfymesh.contracts.errors import ModelError, NodeInputError
from comfymesh.diffusion.models.cache import get_model_cache
from comfymesh.diffusion.nodes.model_files import resolve_file
from comfymesh.stage.node import NodeContext


def file_handle(kind: str, name: str, digest: str) -> dict[str, Any]:
    return {"kind": kind, "file": name, "digest": digest}


def resident(ctx: NodeContext, kind: str, folder: str, name_or_handle: Any,
             load: Callable[[Path], Any]) -> tuple[str, Any]:
    """(digest, model) of a file named directly (a loader) or by a handle of `kind` (a node using it)."""
    handle = name_or_handle if isinstance(name_or_handle, dict) else None
    if handle is not None and handle.get("kind") != kind:
        raise NodeInputError(f"expected a {kind.upper()} input, got a {handle.get('kind', '?')} handle",
                             node_id=ctx.node_id)
    if handle is None and not isinstance(name_or_handle, str):
        raise NodeInputError(f"expected a {kind.upper()} input, got {type(name_or_handle).__name__}",
                             node_id=ctx.node_id)
    name = handle["file"] if handle is not None else name_or_handle
    cache = get_model_cache()

    def placed(path: Path) -> Any:
        return load(path).to(cache.device)

    expected = handle["digest"] if handle is not None else None
    digest, model = cache.model_file(kind, resolve_file(ctx, folder, name, expected), placed)
    if expected is not None and digest != expected:
        raise ModelError(f"{folder} file {name} changed on disk since it was loaded (expected sha256 {expected}, "
                         f"got {digest}); run its loader again", node_id=ctx.node_id)
    return digest, model
