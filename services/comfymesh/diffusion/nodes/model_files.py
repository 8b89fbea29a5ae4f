"""The model files a node may name: files under <home>/models/<kind> with a model suffix."""

from __future__ import annotations

from pathlib import Path

from comfymesh.errors import NodeInputError
from comfymesh.stage.node import NodeContext

MODEL_EXTENSIONS = (".safetensors", ".sft")


def model_dir(ctx: NodeContext, kind: str) -> Path:
    return ctx.home / "models" / kind


def list_model_files(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix in MODEL_EXTENSIONS)


def resolve_file(ctx: NodeContext, kind: str, name: str) -> Path:
    """The file `name` under models/<kind>; NodeInputError naming it and listing what exists."""
    root = model_dir(ctx, kind)
    path = (root / name).resolve()
    if not name or ".." in Path(name).parts or root.resolve() not in path.parents:
        raise NodeInputError(f"invalid {kind} file name {name!r}", node_id=ctx.node_id)
    if not path.is_file():
        existing = list_model_files(root)
        raise NodeInputError(
            f"{kind} file {name!r} not found in {root}; available: {', '.join(existing) or 'none'}",
            node_id=ctx.node_id,
        )
    return path
