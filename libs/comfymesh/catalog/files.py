"""Files that node inputs name (checkpoints, LoRAs, input images): safe resolution and content digests."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

# (class, input) -> folder under the data root that the input's value names a file in
FILE_INPUTS: dict[tuple[str, str], str] = {
    ("CheckpointLoaderSimple", "ckpt_name"): "models/checkpoints",
    ("LoraLoader", "lora_name"): "models/loras",
    ("VAELoader", "vae_name"): "models/vae",
    ("LoadImage", "image"): "input",
}
_ANNOTATIONS = {"[input]": "input", "[output]": "output", "[temp]": "temp"}

_digests: dict[tuple[str, int, int], str] = {}
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
    """sha256 of a file, remembered by (path, size, mtime) so large checkpoints are hashed once."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _digest_lock:
        if key in _digests:
            return _digests[key]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    with _digest_lock:
        _digests[key] = digest.hexdigest()
    return _digests[key]


def input_file(home: Path, class_type: str, input_name: str, value: object) -> Path | None:
    """The existing file a file-naming input points at, or None."""
    folder = FILE_INPUTS.get((class_type, input_name))
    if folder is None or not isinstance(value, str):
        return None
    path = resolve_image_name(home, value) if folder == "input" else resolve_inside(home / folder, value)
    return path if path is not None and path.is_file() else None
