"""The model files a node may name, found through the model-folder registry (`comfymesh.catalog.model_folders`):
<home>/models/<folder> first, then the folders of the extra model paths file."""

from __future__ import annotations

from pathlib import Path

from comfymesh.catalog.model_folders import canonical
from comfymesh.contracts.errors import NodeInputError
from comfymesh.stage.node import NodeContext


def resolve_file(ctx: NodeContext, folder: str, name: str) -> Path:
    """The file `name` of a model folder; NodeInputError naming the folder (never where it lives on the
    server) and listing the files it holds."""
    models = ctx.models
    if not models.accepts(name, folder):
        *first, last = models.suffixes(folder)
        raise NodeInputError(f"{folder} file {name!r}: only {', '.join(first)} and {last} files load (the other "
                             "pickle formats can run code when loaded)", node_id=ctx.node_id)
    path = models.resolve(folder, name)
    if path is None:
        where = f"models/{folder}" + (" or the extra model paths" if models.extra.get(canonical(folder) or "") else "")
        existing = sorted({found for _, names in models.walk(folder) for found in names})
        raise NodeInputError(f"{folder} file {name!r} not found in {where}; available: {', '.join(existing) or 'none'}",
                             node_id=ctx.node_id)
    return path
