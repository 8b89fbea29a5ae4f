"""Files that node inputs name (checkpoints, LoRAs, input images): safe resolution and content digests."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

# (class, input) -> folder under the data root that the input's value names a file in
FILE_INPUTS: dict[tuple[str, str], str] = {
    ("CheckpointLoaderSimple", "ckpt_name"): "models/checkpoints",
    ("LoraLoader", "lora_name"): "models/loras",
    ("VAELoader", "vae_name"): "models/vae",
    ("LoadImage", "image"): "input",
}
_ANNOTATIONS = {"[input]": "input", "[output]": "output", "[temp]": "temp"}

# files at least this big have their digest recorded on disk (smaller ones hash in milliseconds)
PERSIST_MIN_BYTES = 16 * 2**20
_digests: dict[str, list[Any]] | None = None  # path -> [size, mtime_ns, inode, sha256], loaded on first use
_digest_lock = threading.Lock()


def resolve_inside(folder: Path, name: str) -> Path | None:
    """`folder/name` if it stays inside `folder` (no '..', absolute path or symlink leaving it)."""
    if not name or "\x00" in name or name.startswith(("/", "\\")) or "\\" in name:
        return None
    root = folder.resolve()
    candidate = (root / name).resolve()
    if candidate != root and root not in candidate.parents:
        return None
    return candidate


def resolve_image_name(home: Path, name: str) -> Path | None:
    """LoadImage's value: `x.png`, `sub/x.png`, or `x.png [output]` naming another folder."""
    folder = "input"
    for suffix, annotated in _ANNOTATIONS.items():
        if name.endswith(" " + suffix):
            name, folder = name[: -len(suffix) - 1], annotated
    return resolve_inside(home / folder, name)


def file_digest(path: Path) -> str:
    """sha256 of a file, remembered by (path, size, mtime, inode) in memory and in
    `<home>/cache/digests.json`, so a multi-GB checkpoint is hashed once, not at every restart."""
    stat = path.stat()
    key = str(path.resolve())
    stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
    with _digest_lock:
        known = _known_digests().get(key)
        if known is not None and known[:3] == stamp:
            return str(known[3])
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    with _digest_lock:
        _known_digests()[key] = [*stamp, digest.hexdigest()]
        if stat.st_size >= PERSIST_MIN_BYTES:  # models, not every uploaded image
            _save_digests()
    return digest.hexdigest()


def _digest_file() -> Path:
    from comfymesh.config import get_settings

    return get_settings().home / "cache" / "digests.json"


def _known_digests() -> dict[str, list[Any]]:
    """Loaded once per process; a missing or damaged file just means hashing again."""
    global _digests
    if _digests is None:
        _digests = {}
        try:
            data = json.loads(_digest_file().read_text())
            if isinstance(data, dict):
                _digests = {k: v for k, v in data.items() if isinstance(v, list) and len(v) == 4}
        except (OSError, ValueError):
            pass
    return _digests


def _save_digests() -> None:
    path = _digest_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
        tmp.write_text(json.dumps(_known_digests()))
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
