"""The model files a folder holds, as GET /v1/checkpoints lists them: the same listing /object_info's choices
come from (`Catalog.model_files`), with sizes, times and, when asked, sha256 digests read from the job store's
model_digests rows (a file is hashed, streamed, only the first time a version of it is seen)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from comfymesh.catalog import Catalog
from comfymesh.catalog.files import file_digest
from comfymesh.jobs.protocol import AsyncJobStore


@dataclass(frozen=True)
class ListedModel:
    name: str
    size: int
    modified: float
    created: float
    location: str  # the digest row's location: the models URL and folder, or the local file's own folder
    key: str  # the object key (remote) or the local path


def list_models(catalog: Catalog, folder: str) -> list[ListedModel]:
    """Every file of `folder` validation accepts, so nothing listed is refused when used (blocking)."""
    folders = catalog.folders
    if folders.remote is not None:
        location = f"{folders.remote.url}/{folder}"
        return [ListedModel(e.name, e.size, e.modified, e.modified, location, e.key)
                for e in folders.remote.entries(folder, folders.accepts)]
    listed = []
    for name in catalog.model_files(folder):
        path = folders.resolve(folder, name)
        try:
            stat = path.stat() if path is not None else None
        except FileNotFoundError:
            stat = None
        if path is not None and stat is not None:  # else removed since it was listed
            listed.append(ListedModel(name, stat.st_size, stat.st_mtime, stat.st_ctime, path.parent.as_uri(),
                                      str(path)))
    return listed


def _stream_digest(catalog: Catalog, model: ListedModel) -> tuple[str, str]:
    """(version, sha256) of a listed file, read whole once (blocking)."""
    remote = catalog.folders.remote
    if remote is None:
        path = Path(model.key)
        stat = path.stat()
        return f"{stat.st_size}:{stat.st_mtime_ns}", file_digest(path)
    version = remote.version(model.key)
    sha = hashlib.sha256()
    for block in remote.stream(model.key):
        sha.update(block)
    return version, sha.hexdigest()


async def model_digest(store: AsyncJobStore, catalog: Catalog, model: ListedModel) -> str:
    """The file's sha256: its model_digests row for the current version, else hashed now and recorded."""
    remote = catalog.folders.remote
    if remote is not None:
        version = await asyncio.to_thread(remote.version, model.key)
    else:
        stat = await asyncio.to_thread(os.stat, model.key)
        version = f"{stat.st_size}:{stat.st_mtime_ns}"
    row_name = model.name if remote is not None else Path(model.key).name  # with `location`: the file
    known = await store.model_digest(model.location, row_name, version)
    if known is not None:
        return known
    version, digest = await asyncio.to_thread(_stream_digest, catalog, model)
    await store.record_model_digest(model.location, row_name, version, model.size, digest)
    return digest
