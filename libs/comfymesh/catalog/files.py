"""Files that node inputs name (checkpoints, LoRAs, input images): safe resolution and content digests."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

from comfymesh.logs import log_fields

# (class, input) -> folder under the data root that the input's value names a file in
FILE_INPUTS: dict[tuple[str, str], str] = {
    ("CheckpointLoaderSimple", "ckpt_name"): "models/checkpoints",
    ("LoraLoader", "lora_name"): "models/loras",
    ("VAELoader", "vae_name"): "models/vae",
    ("LoadImage", "image"): "input",
    ("LoadLatent", "latent"): "input",
}
_ANNOTATIONS = {"[input]": "input", "[output]": "output", "[temp]": "temp"}

# files at least this big have their digest recorded on disk (smaller ones hash in milliseconds)
PERSIST_MIN_BYTES = 16 * 2**20
_digests: dict[str, list[Any]] | None = None  # path -> [size, mtime_ns, inode, sha256], loaded on first use
_digest_lock = threading.Lock()
_reading: dict[str, threading.Lock] = {}  # path -> held while that file is being hashed
log = logging.getLogger("comfymesh.files")


def _relative_name(name: str) -> bool:
    return bool(name) and "\x00" not in name and not name.startswith(("/", "\\")) and "\\" not in name


def resolve_inside(folder: Path, name: str) -> Path | None:
    """`folder/name` if it stays inside `folder` (no '..', absolute path or symlink leaving it)."""
    if not _relative_name(name):
        return None
    root = folder.resolve()
    candidate = (root / name).resolve()
    if candidate != root and root not in candidate.parents:
        return None
    return candidate


class FileRefused(ValueError):
    """A file a node names may not be read; the message says why, naming no absolute path."""


def open_inside(folder: Path, name: str) -> BinaryIO:
    """Open the regular file `folder/name` for reading, checked at open time, not only when validated.

    The last part is opened without following a symlink (O_NOFOLLOW), and the opened file must be the
    one at its real path inside `folder`; so a symlink swapped in after the orchestrator validated the
    name (at that part or a folder above it) is refused before a byte is read. A FIFO or device is
    refused too (O_NONBLOCK: opening one must not wait for a writer). FileNotFoundError if missing.
    """
    root = os.path.realpath(folder)
    path = os.path.normpath(os.path.join(root, name)) if _relative_name(name) else root
    if os.path.commonpath((root, path)) != root or path == root:
        raise FileRefused("the name leaves its folder")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileRefused("it is a symbolic link; only regular files are read") from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise FileNotFoundError(errno.ENOENT, "no such file") from None
        raise
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise FileRefused("it is not a regular file")
        real = os.path.realpath(path)
        if os.path.commonpath((root, real)) != root or not os.path.samestat(opened, os.stat(real)):
            raise FileRefused("it leaves its folder through a symbolic link")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def split_image_name(name: str) -> tuple[str, str]:
    """LoadImage's value as (folder, name): `x.png`, `sub/x.png`, or `x.png [output]` naming another folder."""
    for suffix, annotated in _ANNOTATIONS.items():
        if name.endswith(" " + suffix):
            return annotated, name[: -len(suffix) - 1]
    return "input", name


def resolve_image_name(home: Path, name: str) -> Path | None:
    """LoadImage's value (see split_image_name) as the file it names inside its folder."""
    folder, name = split_image_name(name)
    return resolve_inside(home / folder, name)


def known_digest(path: Path) -> str | None:
    """The file's sha256 if this process or another one sharing the data root (the orchestrator and a stage)
    has hashed this version of it; None when only reading it whole would tell."""
    stat = path.stat()
    key, stamp = str(path.resolve()), [stat.st_size, stat.st_mtime_ns, stat.st_ino]
    with _digest_lock:
        known = _known_digests().get(key)
        if (known is None or known[:3] != stamp) and stat.st_size >= PERSIST_MIN_BYTES:
            known = _read_digests().get(key)  # hashed meanwhile by another process?
            if known is not None and known[:3] == stamp:
                _known_digests()[key] = known
    return str(known[3]) if known is not None and known[:3] == stamp else None


def file_digest(path: Path) -> str:
    """sha256 of a file, remembered by (path, size, mtime, inode) in memory and in
    `<home>/cache/digests.json`, so a multi-GB checkpoint is hashed once, not at every restart (blocking: a
    new 30 GiB file takes tens of seconds; keep it off an event loop)."""
    known = known_digest(path)
    if known is not None:
        return known
    key = str(path.resolve())
    with _digest_lock:
        reading = _reading.setdefault(key, threading.Lock())
    with reading:  # two jobs meeting the same new model read it once: the second waits for the first's digest
        known = known_digest(path)
        if known is not None:
            return known
        stat = path.stat()
        start = time.perf_counter()
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        with _digest_lock:
            _known_digests()[key] = [stat.st_size, stat.st_mtime_ns, stat.st_ino, digest.hexdigest()]
            if stat.st_size >= PERSIST_MIN_BYTES:  # models, not every uploaded image
                _save_digests()
    if stat.st_size >= PERSIST_MIN_BYTES:
        log.info("hashed a model file once for the cache keys", extra=log_fields(
            file=path.name, GiB=round(stat.st_size / 2**30, 2), s=round(time.perf_counter() - start, 1)))
    return digest.hexdigest()


def remember_digest(path: Path, digest: str) -> None:
    """Record the sha256 of a file just written and hashed on the way (a fetched model), so file_digest
    does not read it again while it stays unchanged."""
    stat = path.stat()
    with _digest_lock:
        _known_digests()[str(path.resolve())] = [stat.st_size, stat.st_mtime_ns, stat.st_ino, digest]


def _digest_file() -> Path:
    from comfymesh.config import get_settings

    return get_settings().home / "cache" / "digests.json"


def _read_digests() -> dict[str, list[Any]]:
    """The digests file's entries; a missing or damaged file just means hashing again."""
    try:
        data = json.loads(_digest_file().read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, list) and len(v) == 4} if isinstance(data, dict) else {}


def _known_digests() -> dict[str, list[Any]]:
    """This process's digests, loaded from the file on first use."""
    global _digests
    if _digests is None:
        _digests = _read_digests()
    return _digests


def _save_digests() -> None:
    """Write this process's digests over the file's, keeping what other processes recorded there."""
    path = _digest_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
        tmp.write_text(json.dumps(_read_digests() | _known_digests()))
        tmp.replace(path)
    except OSError:  # read-only data root: the in-memory copy still serves this process
        pass


def input_file(home: Path, class_type: str, input_name: str, value: object) -> Path | None:
    """The existing file a file-naming input points at, or None."""
    folder = FILE_INPUTS.get((class_type, input_name))
    if folder is None or not isinstance(value, str):
        return None
    path = resolve_image_name(home, value) if folder == "input" else resolve_inside(home / folder, value)
    return path if path is not None and path.is_file() else None
