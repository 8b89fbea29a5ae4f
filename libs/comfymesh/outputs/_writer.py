"""write_pngs: encode a batch, then allocate names and write it under the folder's lock."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from comfymesh import trace
from comfymesh.contracts.errors import NodeInputError
from comfymesh.files import FilesStore, LocalFiles
from comfymesh.outputs._files import exclusive_lock, write_atomically
from comfymesh.outputs._naming import (
    BadFilenamePrefix,
    SaveTarget,
    batch_filename,
    expand_tokens,
    next_counter,
    resolve_target,
)
from comfymesh.outputs._pixels import frames_uint8
from comfymesh.outputs._png import encode_png, png_metadata
from comfymesh.outputs._receipts import (
    LEDGER_DIR,
    OutputIdentity,
    SavedImage,
    read_planned,
    read_receipt,
    receipt_path,
    write_receipt,
)
from comfymesh.outputs._remote import write_files_remote

FolderType = Literal["output", "temp"]

# the next counter per (folder, prefix) this process expects, so a save does not list a folder that
# holds thousands of outputs; a name taken meanwhile (another stage, a user) sends it back to a listing
_expected: dict[tuple[str, str], int] = {}


# the extensions our writers use: one prefix's counter is shared by all of them, as ComfyUI's ignores it
_EXTENSIONS = ("png", "latent")


def _next_free_counter(folder: Path, file_prefix: str, count: int) -> int:
    """ComfyUI's counter (1 + the highest in the folder), remembered between saves; call under the lock."""
    key = (str(folder), file_prefix)
    counter = _expected.get(key)
    if counter is None or any((folder / batch_filename(file_prefix, i, counter + i, ext)).exists()
                              for i in range(count) for ext in _EXTENSIONS):
        counter = next_counter(folder, file_prefix)
    _expected[key] = counter + count
    return counter


def write_pngs(
    images: Any,
    home: Path,
    filename_prefix: str,
    *,
    folder_type: FolderType = "output",
    compress_level: int = 4,
    prompt: Any | None = None,
    extra_pnginfo: Mapping[str, Any] | None = None,
    identity: OutputIdentity | None = None,
    now: datetime | None = None,
    files: FilesStore | None = None,
) -> list[SavedImage]:
    """Write an IMAGE batch as PNGs into `home/<folder_type>` with ComfyUI's names and metadata.

    With an `identity`, a second call for the same job and node returns the first call's files
    instead of writing new ones (as long as those files are still there). `files` is the files store
    (default: the data home's folders).
    Raises NodeInputError when the prefix would leave the folder.
    """
    home = files.root if isinstance(files, LocalFiles) else home
    base = home / folder_type
    node_id = identity.node_id if identity else ""
    # Without a job id there is nothing to be idempotent about (ad-hoc calls, tools).
    tracked = identity if identity is not None and identity.job_id else None
    receipt = receipt_path(home, tracked, folder_type) if tracked is not None else None
    local = files is None or files.local  # a shared store's receipt is read where names are claimed
    if local and receipt is not None and (done := read_receipt(receipt, base)) is not None:
        return done

    frames = frames_uint8(images)
    height, width = frames[0].shape[:2] if frames else (0, 0)
    expanded = expand_tokens(filename_prefix, width=width, height=height, now=now or datetime.now())
    try:
        target = resolve_target(base, expanded)
    except BadFilenamePrefix as exc:
        raise NodeInputError(str(exc), node_id=node_id) from exc
    # Encoding is the slow part and needs no name: do it before taking the lock other writers wait on.
    trace.mark("save.frames")
    metadata = png_metadata(prompt, extra_pnginfo)
    encoded = [encode_png(frame, compress_level=compress_level, metadata=metadata) for frame in frames]

    trace.mark("save.encoded")
    return write_files(encoded, home, target, folder_type=folder_type, identity=tracked, extension="png",
                       files=files)


def write_files(
    encoded: list[bytes],
    home: Path,
    target: SaveTarget,
    *,
    folder_type: FolderType = "output",
    identity: OutputIdentity | None = None,
    extension: str = "png",
    files: FilesStore | None = None,
) -> list[SavedImage]:
    """Name, number and write finished files (PNGs, SaveLatent's .latent) under `target` with ComfyUI's
    counter, under the folder's lock; with a job `identity` a retried node gets its first files back.
    In a shared store (s3://) the store's conditional writes take the lock's place."""
    tracked = identity if identity is not None and identity.job_id else None
    if files is not None and not files.local:
        return write_files_remote(encoded, files, target, folder_type=folder_type, identity=tracked,
                                  extension=extension)
    home = files.root if isinstance(files, LocalFiles) else home
    base = home / folder_type
    receipt = receipt_path(home, tracked, folder_type) if tracked is not None else None
    with exclusive_lock(home / LEDGER_DIR / f"{folder_type}.lock"):
        # A concurrent attempt of the same node may have finished while this one encoded.
        if receipt is not None and (done := read_receipt(receipt, base)) is not None:
            return done
        target.folder.mkdir(parents=True, exist_ok=True)
        planned = read_planned(receipt) if receipt is not None else None
        if planned is not None and len(planned) == len(encoded):
            # an earlier attempt died part-way: finish writing the very names it chose
            saved = planned
        else:
            counter = _next_free_counter(target.folder, target.file_prefix, len(encoded))
            saved = [SavedImage(filename=batch_filename(target.file_prefix, index, counter + index, extension),
                                subfolder=target.subfolder, type=folder_type) for index in range(len(encoded))]
            if tracked is not None and receipt is not None:
                # the receipt goes first, so a crash between files cannot lead a retry to new names
                write_receipt(receipt, tracked, saved, [len(d) for d in encoded])
        for image, data in zip(saved, encoded, strict=True):
            write_atomically(base / image.subfolder / image.filename, data)
    return saved
