"""A host's copies of remote model files, content-addressed: `<root>/<sha256>/<file name>`.

A copy is streamed into a private folder while hashed, then renamed into place whole, so a reader never sees
half a file and two replicas fetching at once keep one copy. A handle names the digest it was made from: a
copy whose bytes no longer hash to it is dropped and fetched again, and a fetched file that does not match
is refused, naming the file and both digests. The folder keeps at most `budget` bytes, least recently used
going first (a removed file stays readable to a process that has it open or mapped)."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
import threading
from pathlib import Path, PurePosixPath

from comfymesh.catalog.files import file_digest, remember_digest
from comfymesh.models._remote import RemoteModels

log = logging.getLogger("comfymesh.models")


class ModelDigestMismatch(Exception):
    """A model file whose bytes do not hash to the digest its handle (or the caller) expects."""

    def __init__(self, name: str, expected: str, actual: str) -> None:
        super().__init__(f"model file {name}: expected sha256 {expected}, got {actual}; the file changed since "
                         "it was listed or loaded, and the cached copy was dropped (run the loader again)")
        self.name, self.expected, self.actual = name, expected, actual


class HostModelCache:
    """Fetched model files under `root`, at most `budget` bytes (0: no bound)."""

    def __init__(self, root: Path, budget: int) -> None:
        self.root = root
        self.budget = budget
        self._lock = threading.Lock()

    def copy_of(self, digest: str) -> Path | None:
        """The cached file of `digest`, if any (not yet checked against it)."""
        folder = self.root / digest
        files = [p for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
        return files[0] if files else None

    def fetch(self, remote: RemoteModels, key: str, expected: str | None = None) -> Path:
        """A local copy of object `key`: the cached one for `expected` (or for the object's current version)
        when its bytes still hash to that digest, else a fresh one. ModelDigestMismatch when the object's
        bytes are not `expected`; FileNotFoundError when it is gone."""
        known = expected or self._known(remote, key)
        if known:
            copy = self.copy_of(known)
            if copy is not None:
                actual = file_digest(copy)
                if actual == known:
                    os.utime(copy.parent)  # recently used: trimmed last
                    return copy
                log.warning("model cache: %s no longer hashes to %s (got %s); dropped, fetching it again",
                            key, known, actual)
                self.drop(known)
        version = remote.version(key)
        path, digest = self._download(remote, key)
        if expected and digest != expected:
            self.drop(digest)
            raise ModelDigestMismatch(key, expected, digest)
        self._remember(remote, key, version, digest)
        self.trim(keep=digest)
        return path

    def drop(self, digest: str) -> None:
        shutil.rmtree(self.root / digest, ignore_errors=True)

    def _download(self, remote: RemoteModels, key: str) -> tuple[Path, str]:
        staging = self.root / f".fetch-{secrets.token_hex(6)}"
        staging.mkdir(parents=True)
        target = staging / PurePosixPath(key).name
        sha = hashlib.sha256()
        try:
            with target.open("wb") as out:
                for block in remote.stream(key):
                    sha.update(block)
                    out.write(block)
            digest = sha.hexdigest()
            final = self.root / digest
            try:
                os.rename(staging, final)
            except OSError:  # another process put the same bytes there first: keep theirs
                if not final.is_dir():
                    raise
            copy = self.copy_of(digest)
            assert copy is not None
            remember_digest(copy, digest)
            return copy, digest
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _index(self, remote: RemoteModels, key: str, version: str) -> Path:
        name = hashlib.sha256(f"{remote.url}/{key}@{version}".encode()).hexdigest()
        return self.root / ".names" / name

    def _known(self, remote: RemoteModels, key: str) -> str | None:
        """The digest of the object's current version, when this host fetched that version before."""
        try:
            return self._index(remote, key, remote.version(key)).read_text().strip() or None
        except FileNotFoundError:
            return None

    def _remember(self, remote: RemoteModels, key: str, version: str, digest: str) -> None:
        index = self._index(remote, key, version)
        index.parent.mkdir(parents=True, exist_ok=True)
        temp = index.with_name(f".{index.name}.{secrets.token_hex(4)}")
        temp.write_text(digest)
        os.replace(temp, index)

    def trim(self, keep: str = "") -> None:
        """Remove the least recently used copies until the folder fits its budget (`keep` stays)."""
        if not self.budget:
            return
        with self._lock:
            copies = []
            for folder in self.root.iterdir():
                if folder.is_dir() and not folder.name.startswith("."):
                    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
                    copies.append((folder.stat().st_mtime, folder.name, size))
            total = sum(size for _, _, size in copies)
            for _, digest, size in sorted(copies):
                if total <= self.budget:
                    break
                if digest != keep:
                    log.info("model cache: removed %s (%d bytes) to stay within %d bytes", digest, size,
                             self.budget)
                    self.drop(digest)
                    total -= size
