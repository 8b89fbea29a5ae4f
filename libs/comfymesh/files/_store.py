"""The contract every files backend keeps: objects by key (`output/sub/name.png`), written whole."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class FilesUnavailable(Exception):
    """The files store cannot be used (wrong credentials, missing bucket, unreachable): not ready to serve."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"files store unavailable ({code}): {message}")
        self.code = code


@dataclass(frozen=True)
class FileEntry:
    """One stored object: its key under the store's root, size in bytes, last modification (epoch seconds)."""

    key: str
    size: int
    modified: float


class FilesStore(Protocol):
    """Keys are `/`-separated, relative to the store's root, checked by `comfymesh.files.safe_key` first.

    Every call is blocking (run it in a worker thread on an event loop). A read of a missing key raises
    FileNotFoundError; `claim` writes only if the key is free, so two hosts never take one name.
    """

    url: str

    @property
    def local(self) -> bool:
        """Whether calls are local file-system calls, cheap enough for an event loop."""
        ...

    def read(self, key: str) -> bytes: ...
    def write(self, key: str, data: bytes) -> None: ...
    def claim(self, key: str, data: bytes) -> bool: ...
    def exists(self, key: str) -> bool: ...
    def version(self, key: str) -> str: ...
    def delete(self, key: str) -> None: ...
    def entries(self, prefix: str) -> list[FileEntry]: ...
    def presign(self, key: str, ttl_s: int) -> str | None: ...
    def check(self) -> None: ...
