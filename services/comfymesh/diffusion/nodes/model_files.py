"""The model files a node may name, found through the model-folder registry (`comfymesh.catalog.model_folders`):
<home>/models/<folder> first, then the folders of the extra model paths file; or, with an s3://
COMFYMESH_MODELS_URL, this host's copy of the bucket's file, checked against the digest a handle names."""

from __future__ import annotations

from pathlib import Path

from comfymesh.catalog.model_folders import canonical
from comfymesh.contracts.errors import ModelError, NodeInputError
from comfymesh.models import ModelDigestMismatch
from comfymesh.stage.node import NodeContext


def resolve_file(ctx: NodeContext, folder: str, name: str, digest: str | None = None) -> Path:
    """The file `name` of a model folder; NodeInputError naming the folder (never where it lives on the
    server) and listing the files it holds. A remote file is fetched by `digest` when given (a handle's):
    ModelError naming the file and both digests when the bucket's bytes are others."""
    models = ctx.models
    if not models.accepts(name, folder):
        *first, last = models.suffixes(folder)
        raise NodeInputError(f"{folder} file {name!r}: only {', '.join(first)} and {last} files load (the other "
                             "pickle formats can run code when loaded)", node_id=ctx.node_id)
    try:
        path = models.fetch(folder, name, digest) if digest else models.resolve(folder, name)
    except ModelDigestMismatch as exc:
        raise ModelError(f"{folder} {exc}", node_id=ctx.node_id) from None
    if path is None:
        where = f"models/{folder}" + (" or the extra model paths" if models.extra.get(canonical(folder) or "") else "")
        existing = sorted({found for _, names in models.walk(folder) for found in names})
        raise NodeInputError(f"{folder} file {name!r} not found in {where}; available: {', '.join(existing) or 'none'}",
                             node_id=ctx.node_id)
    return path
