"""Assets of Comfy API v2 on disk: records (JSON, one per asset id) over content-addressed blobs.

An uploaded blob is stored once per content hash, `input/assets/<blake3 hex><suffix>`, where LoadImage (and the
stages) read it as `assets/<hex><suffix>`; every upload or from-hash mints a record of its own, owned by whoever
made it. A job's output is an asset too: its record is made the first time the job is read, under an id derived
from the job and the file, so polling never mints a second one. Records live in `<home>/assets/`.
"""

from __future__ import annotations

import json
import mimetypes
import os
import re
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from blake3 import blake3

from comfymesh.catalog.files import resolve_inside

HASH_PREFIX = "blake3:"
HASH_PATTERN = re.compile(r"^blake3:[0-9a-f]{64}$")
_ID_PATTERN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_SUFFIX = re.compile(r"^\.[a-z0-9]{1,8}$")
BLOB_FOLDER = "assets"  # under input/
_OUTPUT_IDS = uuid.UUID("6b1f3c52-0a4e-4c55-9f43-2f7c2b9a6e11")  # namespace of output asset ids
_CHUNK = 1 << 16
SERVED_FOLDERS = ("input", "output", "temp")


class HashMismatch(ValueError):
    """The bytes received do not hash to the hash the client declared."""


@dataclass(frozen=True)
class AssetRecord:
    id: str
    hash: str
    size_bytes: int
    content_type: str
    file_path: str | None
    created_at: float
    folder: str        # input, output or temp
    name: str          # inside the folder, '/' separators
    owner: str = ""    # "" : anyone (outputs; uploads with auth off)
    job_id: str | None = None

    def visible_to(self, principal: str) -> bool:
        return not self.owner or self.owner == principal

    def load_image_value(self) -> str:
        """The value LoadImage takes for this file: `sub/x.png` in input, `sub/x.png [output]` elsewhere."""
        return self.name if self.folder == "input" else f"{self.name} [{self.folder}]"


def is_asset_id(value: str) -> bool:
    return bool(_ID_PATTERN.match(value))


def content_type_of(name: str, declared: str = "") -> str:
    declared = declared.strip().lower()
    if re.match(r"^[a-z0-9][a-z0-9.+-]*/[a-z0-9][a-z0-9.+-]*$", declared):
        return declared
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _suffix(file_path: str, content_type: str) -> str:
    suffix = os.path.splitext(file_path)[1].lower()
    if _SUFFIX.match(suffix):
        return suffix
    guessed = mimetypes.guess_extension(content_type) or ""
    return guessed if _SUFFIX.match(guessed) else ""


class AssetStore:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.records = home / "assets"
        self.blobs = home / "input" / BLOB_FOLDER

    # -- records --------------------------------------------------------------------------------------------
    def _record_path(self, asset_id: str) -> Path:
        return self.records / f"{asset_id}.json"

    def _write(self, record: AssetRecord) -> None:
        self.records.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.records, prefix=".record-")
        with os.fdopen(fd, "w") as handle:
            json.dump(asdict(record), handle)
        os.replace(tmp, self._record_path(record.id))

    def get(self, asset_id: str, principal: str) -> AssetRecord | None:
        """The record, if there is one this principal may see."""
        if not is_asset_id(asset_id):
            return None
        try:
            raw: dict[str, Any] = json.loads(self._record_path(asset_id).read_text())
            record = AssetRecord(**raw)
        except (OSError, ValueError, TypeError):
            return None
        return record if record.visible_to(principal) else None

    def delete(self, asset_id: str, principal: str) -> bool:
        """Forget a record (a blob stays: other records may share it; an output stays with its job)."""
        if self.get(asset_id, principal) is None:
            return False
        self._record_path(asset_id).unlink(missing_ok=True)
        return True

    def path_of(self, record: AssetRecord) -> Path | None:
        """The file of a record, if it is still there (and inside its folder)."""
        if record.folder not in SERVED_FOLDERS:
            return None
        path = resolve_inside(self.home / record.folder, record.name)
        return path if path is not None and path.is_file() else None

    # -- blobs ----------------------------------------------------------------------------------------------
    def blob_of(self, digest: str) -> Path | None:
        """The stored blob with this content hash, if any."""
        if not HASH_PATTERN.match(digest) or not self.blobs.is_dir():
            return None
        hexdigest = digest.removeprefix(HASH_PREFIX)
        found = sorted(p for p in self.blobs.glob(hexdigest + "*") if p.is_file() and p.stem == hexdigest)
        return found[0] if found else None

    def _mint(self, blob: Path, digest: str, file_path: str | None, content_type: str, principal: str) -> AssetRecord:
        record = AssetRecord(id=str(uuid.uuid4()), hash=digest, size_bytes=blob.stat().st_size,
                             content_type=content_type, file_path=file_path, created_at=time.time(),
                             folder="input", name=f"{BLOB_FOLDER}/{blob.name}", owner=principal)
        self._write(record)
        return record

    def upload(self, source: BinaryIO, file_path: str, content_type: str, expected_hash: str | None,
               principal: str) -> tuple[AssetRecord, bool]:
        """Store the bytes of `source` (once per content), mint a record; (record, whether the blob is new).
        Raises HashMismatch when `expected_hash` is not the content's."""
        self.blobs.mkdir(parents=True, exist_ok=True)
        hasher = blake3()
        fd, tmp = tempfile.mkstemp(dir=self.blobs, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := source.read(_CHUNK):
                    hasher.update(chunk)
                    out.write(chunk)
            digest = HASH_PREFIX + hasher.hexdigest()
            if expected_hash is not None and expected_hash.lower() != digest:
                raise HashMismatch(f"the bytes received hash to {digest}, not to the declared {expected_hash[:80]}")
            media_type = content_type_of(file_path, content_type)
            existing = self.blob_of(digest)
            if existing is not None:
                return self._mint(existing, digest, file_path, media_type, principal), False
            blob = self.blobs / (digest.removeprefix(HASH_PREFIX) + _suffix(file_path, media_type))
            os.replace(tmp, blob)
            return self._mint(blob, digest, file_path, media_type, principal), True
        finally:
            Path(tmp).unlink(missing_ok=True)

    def from_hash(self, digest: str, file_path: str | None, principal: str) -> AssetRecord | None:
        """A new record over bytes already stored, or None when none have this hash."""
        blob = self.blob_of(digest.lower())
        if blob is None:
            return None
        return self._mint(blob, digest.lower(), file_path, content_type_of(blob.name), principal)

    # -- outputs --------------------------------------------------------------------------------------------
    def output(self, job_id: str, folder: str, subfolder: str, filename: str) -> AssetRecord | None:
        """The asset of a job's output file (made on first sight, hashed then), or None if the file is gone."""
        name = "/".join(part for part in (subfolder, filename) if part)
        asset_id = str(uuid.uuid5(_OUTPUT_IDS, f"{job_id}\0{folder}\0{name}"))
        known = self.get(asset_id, "")
        if known is not None:
            return known
        path = resolve_inside(self.home / folder, name) if folder in SERVED_FOLDERS else None
        if path is None or not path.is_file():
            return None
        hasher = blake3()
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                hasher.update(chunk)
        record = AssetRecord(id=asset_id, hash=HASH_PREFIX + hasher.hexdigest(), size_bytes=path.stat().st_size,
                             content_type=content_type_of(filename), file_path=filename,
                             created_at=path.stat().st_mtime, folder=folder, name=name, job_id=job_id)
        self._write(record)
        return record
