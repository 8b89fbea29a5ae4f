"""Outputs in a shared files store (s3://): names claimed by the store itself, not by a local lock, so
stages on several hosts number one prefix without collisions; receipts are objects beside the outputs."""

from __future__ import annotations

import json
from dataclasses import asdict

from comfymesh.files import FilesStore
from comfymesh.outputs._naming import SaveTarget, batch_filename, highest_counter
from comfymesh.outputs._receipts import LEDGER_DIR, OutputIdentity, SavedImage, receipt_name

# a batch whose names keep being taken by other writers gives up after this many listings
_MAX_ROUNDS = 50
# the next counter per (store, folder, prefix) this process expects, as the local writer keeps it
_expected: dict[tuple[FilesStore, str, str], int] = {}


def _key(image: SavedImage) -> str:
    return "/".join(part for part in (image.type, image.subfolder, image.filename) if part)


def _receipt_key(identity: OutputIdentity, folder_type: str) -> str:
    return f"{LEDGER_DIR}/{receipt_name(identity, folder_type)}"


def _read_receipt(files: FilesStore, key: str) -> list[SavedImage] | None:
    try:
        entries = json.loads(files.read(key))["images"]
        return [SavedImage(e["filename"], e["subfolder"], e["type"]) for e in entries]
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
        return None


def _listed_counter(files: FilesStore, folder_key: str, file_prefix: str) -> int:
    names = [entry.key.rsplit("/", 1)[-1] for entry in files.entries(folder_key)
             if entry.key.rsplit("/", 1)[0] == folder_key]
    return highest_counter(names, file_prefix) + 1


def write_files_remote(encoded: list[bytes], files: FilesStore, target: SaveTarget, *, folder_type: str,
                       identity: OutputIdentity | None, extension: str) -> list[SavedImage]:
    """Claim ComfyUI's next names for `encoded` in `files` (each claim writes its file) and return them.

    With a job `identity` the chosen names are recorded first, so a retried node gets its first files back
    (and finishes writing them if an earlier attempt died part-way)."""
    receipt = _receipt_key(identity, folder_type) if identity is not None else None
    planned = _read_receipt(files, receipt) if receipt is not None else None
    if planned is not None and len(planned) == len(encoded):
        for image, data in zip(planned, encoded, strict=True):
            if not files.exists(_key(image)):
                files.write(_key(image), data)
        return planned
    folder_key = "/".join(part for part in (folder_type, target.subfolder) if part)
    memo = (files, folder_key, target.file_prefix)
    counter = _expected.get(memo) or _listed_counter(files, folder_key, target.file_prefix)
    for _ in range(_MAX_ROUNDS):
        saved = [SavedImage(batch_filename(target.file_prefix, index, counter + index, extension),
                            target.subfolder, folder_type) for index in range(len(encoded))]
        if identity is not None and receipt is not None:
            record = {"job_id": identity.job_id, "node_id": identity.node_id,
                      "images": [asdict(image) | {"size": len(data)} for image, data in zip(saved, encoded,
                                                                                             strict=True)]}
            files.write(receipt, json.dumps(record).encode())
        claimed = []
        for image, data in zip(saved, encoded, strict=True):
            if not files.claim(_key(image), data):
                break
            claimed.append(image)
        if len(claimed) == len(saved):
            _expected[memo] = counter + len(saved)
            return saved
        for image in claimed:  # another writer holds a later name of this batch: start over past it
            files.delete(_key(image))
        counter = max(counter + 1, _listed_counter(files, folder_key, target.file_prefix))
    raise OSError(f"no free names for {target.file_prefix!r} after {_MAX_ROUNDS} tries: other writers took them")
