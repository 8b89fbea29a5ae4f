"""The file:// backend: objects are files under one folder (the data home by default), as they always were."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from comfymesh.files._store import FileEntry, FilesUnavailable


class LocalFiles:
    """Files under `root`; writes go through a hidden temporary file and a rename (or a link, to claim)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.as_uri()

    @property
    def local(self) -> bool:
        return True

    def path(self, key: str) -> Path:
        return self.root / key

    def read(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def _staged(self, key: str, data: bytes) -> tuple[Path, Path]:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
        temp.write_bytes(data)
        return temp, target

    def write(self, key: str, data: bytes) -> None:
        temp, target = self._staged(key, data)
        try:
            os.replace(temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    def claim(self, key: str, data: bytes) -> bool:
        temp, target = self._staged(key, data)
        try:
            os.link(temp, target)  # fails if the name is taken: the file system is the arbiter
            return True
        except FileExistsError:
            return False
        finally:
            temp.unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def version(self, key: str) -> str:
        """A token that changes when the file does (size and modification time)."""
        stat = self.path(key).stat()
        return f"{stat.st_size}:{stat.st_mtime_ns}"

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def entries(self, prefix: str) -> list[FileEntry]:
        base = self.path(prefix)
        if not base.is_dir():
            return []
        found = []
        for path in base.rglob("*"):
            if path.is_file() and not path.name.endswith(".part"):
                stat = path.stat()
                found.append(FileEntry(path.relative_to(self.root).as_posix(), stat.st_size, stat.st_mtime))
        return found

    def presign(self, key: str, ttl_s: int) -> str | None:
        return None  # a local file is served by the gateway itself

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if not os.access(self.root, os.W_OK):
                raise FilesUnavailable("EACCES", f"{self.root} is not writable")
        except OSError as exc:
            raise FilesUnavailable(type(exc).__name__, str(exc)) from exc
