"""Assets of Comfy API v2 in a shared (s3://) files store: the same records and content-addressed blobs as
`asset_store`, as objects (`assets/<id>.json`, `input/assets/<blake3 hex><suffix>`) that every gateway sees.
A blob is written with a conditional put, so two gateways storing one content write it once."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO

from blake3 import blake3

from comfymesh.files import BadKey, FilesStore, safe_key
from comfymesh.gateway.v2.asset_store import (
    _OUTPUT_IDS,
    BLOB_FOLDER,
    HASH_PATTERN,
    HASH_PREFIX,
    SERVED_FOLDERS,
    AssetRecord,
    AssetStore,
    HashMismatch,
    _suffix,
    content_type_of,
    is_asset_id,
)

_BLOBS = f"input/{BLOB_FOLDER}"


class SharedAssetStore(AssetStore):
    """AssetStore's contract over a FilesStore (calls are blocking: the routes run them in threads)."""

    def __init__(self, home: Path, files: FilesStore) -> None:
        super().__init__(home)
        self.files = files

    def _write(self, record: AssetRecord) -> None:
        self.files.write(f"assets/{record.id}.json", json.dumps(asdict(record)).encode())

    def get(self, asset_id: str, principal: str) -> AssetRecord | None:
        if not is_asset_id(asset_id):
            return None
        try:
            raw: dict[str, Any] = json.loads(self.files.read(f"assets/{asset_id}.json"))
            record = AssetRecord(**raw)
        except (FileNotFoundError, ValueError, TypeError):
            return None
        return record if record.visible_to(principal) else None

    def delete(self, asset_id: str, principal: str) -> bool:
        if self.get(asset_id, principal) is None:
            return False
        self.files.delete(f"assets/{asset_id}.json")
        return True

    def path_of(self, record: AssetRecord) -> Path | None:
        return None  # no local file: content_of gives the bytes

    def content_of(self, record: AssetRecord) -> bytes | None:
        """The bytes of a record's file, if it is still stored."""
        if record.folder not in SERVED_FOLDERS:
            return None
        try:
            return self.files.read(safe_key(record.folder, "", record.name))
        except (BadKey, FileNotFoundError):
            return None

    def _blob_key(self, digest: str) -> str | None:
        if not HASH_PATTERN.match(digest):
            return None
        hexdigest = digest.removeprefix(HASH_PREFIX)
        found = sorted(entry.key for entry in self.files.entries(_BLOBS)
                       if entry.key.rsplit("/", 1)[-1].split(".", 1)[0] == hexdigest)
        return found[0] if found else None

    def blob_of(self, digest: str) -> Path | None:
        key = self._blob_key(digest)
        return Path(key) if key is not None else None  # a key, for callers that only test for one

    def _mint_key(self, key: str, size: int, digest: str, file_path: str | None, content_type: str,
                  principal: str) -> AssetRecord:
        record = AssetRecord(id=str(uuid.uuid4()), hash=digest, size_bytes=size, content_type=content_type,
                             file_path=file_path, created_at=time.time(), folder="input",
                             name=key.removeprefix("input/"), owner=principal)
        self._write(record)
        return record

    def upload(self, source: BinaryIO, file_path: str, content_type: str, expected_hash: str | None,
               principal: str) -> tuple[AssetRecord, bool]:
        data = source.read()  # bounded by the gateway's request body limit
        digest = HASH_PREFIX + blake3(data).hexdigest()
        if expected_hash is not None and expected_hash.lower() != digest:
            raise HashMismatch(f"the bytes received hash to {digest}, not to the declared {expected_hash[:80]}")
        media_type = content_type_of(file_path, content_type)
        existing = self._blob_key(digest)
        if existing is not None:
            return self._mint_key(existing, len(data), digest, file_path, media_type, principal), False
        key = f"{_BLOBS}/{digest.removeprefix(HASH_PREFIX)}{_suffix(file_path, media_type)}"
        new = self.files.claim(key, data)  # taken: another gateway stored this very content meanwhile
        return self._mint_key(key, len(data), digest, file_path, media_type, principal), new

    def from_hash(self, digest: str, file_path: str | None, principal: str) -> AssetRecord | None:
        key = self._blob_key(digest.lower())
        if key is None:
            return None
        size = len(self.files.read(key))
        return self._mint_key(key, size, digest.lower(), file_path, content_type_of(key), principal)

    def output(self, job_id: str, folder: str, subfolder: str, filename: str) -> AssetRecord | None:
        name = "/".join(part for part in (subfolder, filename) if part)
        asset_id = str(uuid.uuid5(_OUTPUT_IDS, f"{job_id}\0{folder}\0{name}"))
        known = self.get(asset_id, "")
        if known is not None:
            return known
        try:
            data = self.files.read(safe_key(folder, "", name)) if folder in SERVED_FOLDERS else None
        except (BadKey, FileNotFoundError):
            data = None
        if data is None:
            return None
        record = AssetRecord(id=asset_id, hash=HASH_PREFIX + blake3(data).hexdigest(), size_bytes=len(data),
                             content_type=content_type_of(filename), file_path=filename, created_at=time.time(),
                             folder=folder, name=name, job_id=job_id)
        self._write(record)
        return record
