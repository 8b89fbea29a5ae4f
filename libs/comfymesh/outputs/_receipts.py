"""Receipts: which files one (job, node) output already wrote, so a retried attempt writes none again."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from comfymesh.outputs._files import write_atomically

LEDGER_DIR = ".outputs"
"""Hidden folder under the data home for receipts and locks (kept out of output/ and temp/ listings)."""


@dataclass(frozen=True)
class OutputIdentity:
    """What makes two calls the same output: the job and the node, never the attempt."""

    job_id: str
    node_id: str


@dataclass(frozen=True)
class SavedImage:
    """One written image, as the UI and /view address it."""

    filename: str
    subfolder: str
    type: str  # "output" or "temp"

    def as_ui(self) -> dict[str, str]:
        return {"filename": self.filename, "subfolder": self.subfolder, "type": self.type}


def _key(text: str) -> str:
    # Ids may hold any character; a digest makes a safe, fixed-length file name.
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def receipt_name(identity: OutputIdentity, folder_type: str) -> str:
    """One receipt per (job, node, folder type), grouped by job so a job's receipts can go together."""
    return f"receipts/{_key(identity.job_id)}/{_key(identity.node_id)}.{folder_type}.json"


def receipt_path(home: Path, identity: OutputIdentity, folder_type: str) -> Path:
    """The receipt's file under the data home's ledger folder."""
    return home / LEDGER_DIR / receipt_name(identity, folder_type)


def read_receipt(path: Path, base: Path) -> list[SavedImage] | None:
    """The images a receipt records, or None when it is absent or any file is gone or changed."""
    try:
        entries = json.loads(path.read_text())["images"]
        recorded = [(SavedImage(e["filename"], e["subfolder"], e["type"]), e["size"]) for e in entries]
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
        return None  # absent or unreadable: write afresh, and a new receipt replaces this one
    for image, size in recorded:
        file = base / image.subfolder / image.filename
        # The temp folder is wiped at start-up and its names can come round again: check the size too.
        if not file.is_file() or file.stat().st_size != size:
            return None
    return [image for image, _ in recorded]


def read_planned(path: Path) -> list[SavedImage] | None:
    """The names a receipt chose, whether or not every file was written (a crash may have cut it short)."""
    try:
        entries = json.loads(path.read_text())["images"]
        return [SavedImage(e["filename"], e["subfolder"], e["type"]) for e in entries]
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
        return None


def write_receipt(path: Path, identity: OutputIdentity, images: list[SavedImage], sizes: list[int]) -> None:
    """Record the images about to be written (names and sizes), before writing them."""
    record = {
        "job_id": identity.job_id,
        "node_id": identity.node_id,
        "images": [asdict(image) | {"size": size} for image, size in zip(images, sizes, strict=True)],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(record).encode())
