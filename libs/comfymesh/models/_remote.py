"""Model folders in an S3 prefix (`s3://bucket/prefix/checkpoints/x.safetensors`), listed on every ask and read
as a stream; the files store's S3 backend does the talking, listing caches off."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from comfymesh.catalog.model_folders import FOLDERS, canonical
from comfymesh.files import S3Files

_BLOCK = 8 * 2**20  # read size of a streamed fetch: few requests, bounded memory


@dataclass(frozen=True)
class ModelEntry:
    """One listed model file: its name as nodes use it, its object key, size, last change and version."""

    name: str
    key: str
    size: int
    modified: float


class RemoteModels:
    """`s3://bucket/prefix` holding `<folder>/<name>` objects, folder names and aliases as ComfyUI's."""

    def __init__(self, url: str, options: dict[str, Any]) -> None:
        self.store = S3Files(url, options)
        self.url = self.store.url

    def entries(self, folder: str, accepts: Any) -> list[ModelEntry]:
        """The accepted files of a registry folder, first sub-folder winning a name, sorted by name."""
        name = canonical(folder)
        found: dict[str, ModelEntry] = {}
        for sub in FOLDERS.get(name or "", ()):
            for entry in self.store.entries(sub):
                relative = entry.key[len(sub) + 1:]
                if relative and relative not in found and accepts(relative, folder):
                    found[relative] = ModelEntry(relative, entry.key, entry.size, entry.modified)
        return [found[key] for key in sorted(found)]

    def key_of(self, folder: str, name: str) -> str | None:
        """The object key of file `name` of `folder` (first sub-folder holding it), never outside the folder;
        None when absent."""
        normal = posixpath.normpath(name) if name and "\x00" not in name and "\\" not in name else ""
        if not normal or normal.startswith(("/", "../")) or normal in (".", ".."):
            return None
        for sub in FOLDERS.get(canonical(folder) or "", ()):
            if self.store.exists(f"{sub}/{normal}"):
                return f"{sub}/{normal}"
        return None

    def version(self, key: str) -> str:
        """A token that changes when the object does (its ETag)."""
        return self.store.version(key)

    def stream(self, key: str) -> Iterator[bytes]:
        """The object's bytes in blocks; FileNotFoundError when it is gone."""
        with self.store.fs.open(f"{self.store.root}/{key}", "rb", block_size=_BLOCK) as handle:
            while block := handle.read(_BLOCK):
                yield block

    def check(self) -> None:
        """FilesUnavailable (with the S3 error code) for a wrong secret or a missing bucket."""
        self.store.check()
