"""Retention: expire old cache entries, keep the cache under a size budget, and delete what nothing uses
(unreferenced artifacts, old temp files, receipts of jobs that can no longer retry, optionally old
outputs)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from comfymesh.artifacts import ArtifactStore
from comfymesh.contracts import wirejson
from comfymesh.contracts.values import tensors_in, value_from_dict
from comfymesh.files import FileEntry, FilesStore, LocalFiles
from comfymesh.jobs.protocol import AsyncJobStore
from comfymesh.logs import log_fields
from comfymesh.outputs import LEDGER_DIR

log = logging.getLogger("comfymesh.orchestrator")


@dataclass(frozen=True)
class RetentionPolicy:
    """Ages in seconds; 0 keeps forever. Artifacts younger than the grace period may belong to running jobs."""

    cache_max_age_s: float = 7 * 24 * 3600.0
    cache_max_bytes: int = 20 * 2**30
    temp_max_age_s: float = 24 * 3600.0
    output_max_age_s: float = 0.0
    artifact_grace_s: float = 3600.0
    # a SaveImage receipt matters while its job may still retry: no job runs longer than its timeout
    # (at most 7 days), so a receipt folder untouched for 8 days is dead
    receipt_max_age_s: float = 8 * 24 * 3600.0

    def __post_init__(self) -> None:
        if min(self.cache_max_age_s, self.temp_max_age_s, self.output_max_age_s, self.artifact_grace_s,
               self.receipt_max_age_s) < 0 \
                or self.cache_max_bytes < 0:
            raise ValueError("retention ages and sizes must not be negative")


class CacheIndex(Protocol):
    """The cache rows a retention pass reads and deletes (blocking calls: the pass runs in a worker thread)."""

    def cache_rows(self) -> list[tuple[str, str, float]]: ...
    def cache_delete(self, signature: str) -> None: ...


class BlockingCache:
    """An async job store's cache rows for a pass in a worker thread: each call runs on the event loop."""

    def __init__(self, store: AsyncJobStore, loop: asyncio.AbstractEventLoop) -> None:
        self._store = store
        self._loop = loop

    def cache_rows(self) -> list[tuple[str, str, float]]:
        return asyncio.run_coroutine_threadsafe(self._store.cache_rows(), self._loop).result()

    def cache_delete(self, signature: str) -> None:
        asyncio.run_coroutine_threadsafe(self._store.cache_delete(signature), self._loop).result()


@dataclass
class RetentionReport:
    cache_entries_removed: int = 0
    artifacts_removed: int = 0
    bytes_freed: int = 0
    files_removed: list[str] = field(default_factory=list)
    receipt_folders_removed: int = 0


def _tensor_refs(outputs_json: str) -> list[tuple[str, int]]:
    """(digest, size) of the stored bundles a cache entry's outputs refer to."""
    # bundles embedded in JSON values too (a MODEL handle's patch inputs: contracts.values.EMBEDDED_REF)
    refs = [ref for item in wirejson.loads(outputs_json) for ref in tensors_in(value_from_dict(item))]
    return [(ref.digest, ref.nbytes) for ref in refs]


def _modified(info: dict[str, object], now: float) -> float:
    """When a listed object was last written: a file's mtime, S3's LastModified (a datetime), else now."""
    stamp = info.get("mtime") or info.get("LastModified") or info.get("created") or now
    return float(stamp.timestamp() if hasattr(stamp, "timestamp") else stamp)  # type: ignore[arg-type]


def _expire_shared(files: FilesStore, policy: RetentionPolicy, now: float, report: RetentionReport) -> None:
    """Old temp and output objects and dead receipt folders of a shared (s3://) files store, by LastModified."""
    for folder, max_age in (("temp", policy.temp_max_age_s), ("output", policy.output_max_age_s)):
        if not max_age:
            continue
        for entry in files.entries(folder):
            if entry.modified < now - max_age:
                files.delete(entry.key)
                report.bytes_freed += entry.size
                report.files_removed.append(entry.key)
    if not policy.receipt_max_age_s:
        return
    jobs: dict[str, list[FileEntry]] = {}
    for entry in files.entries(f"{LEDGER_DIR}/receipts"):
        jobs.setdefault(entry.key.rsplit("/", 1)[0], []).append(entry)
    for receipts in jobs.values():
        if max(entry.modified for entry in receipts) < now - policy.receipt_max_age_s:
            for entry in receipts:
                files.delete(entry.key)
            report.receipt_folders_removed += 1


def _expire_local(home: Path, policy: RetentionPolicy, now: float, report: RetentionReport) -> None:
    """Old temp files and outputs and dead receipt folders under the data home (file://), by mtime."""
    for folder, max_age in (("temp", policy.temp_max_age_s), ("output", policy.output_max_age_s)):
        root = home / folder
        if not max_age or not root.is_dir():
            continue
        for path in root.rglob("*"):
            if path.is_file() and path.stat().st_mtime < now - max_age:
                report.bytes_freed += path.stat().st_size
                path.unlink()
                report.files_removed.append(f"{folder}/{path.relative_to(root).as_posix()}")
    receipts = home / LEDGER_DIR / "receipts"  # one folder per job
    if policy.receipt_max_age_s and receipts.is_dir():
        for job_folder in receipts.iterdir():
            if job_folder.is_dir() and job_folder.stat().st_mtime < now - policy.receipt_max_age_s:
                shutil.rmtree(job_folder, ignore_errors=True)
                report.receipt_folders_removed += 1


def collect(store: CacheIndex, artifacts: ArtifactStore, home: Path, policy: RetentionPolicy,
            now: float | None = None, files: FilesStore | None = None) -> RetentionReport:
    """One garbage-collection pass (blocking; run it in a thread). `files`: a shared files store whose temp
    files, outputs and receipts expire instead of the data home's."""
    now = now or time.time()
    report = RetentionReport()
    rows = store.cache_rows()  # oldest use first
    keep = []
    for signature, outputs_json, last_used in rows:
        if policy.cache_max_age_s and last_used < now - policy.cache_max_age_s:
            store.cache_delete(signature)
            report.cache_entries_removed += 1
        else:
            keep.append((signature, _tensor_refs(outputs_json)))
    sizes = {digest: size for _, refs in keep for digest, size in refs}
    total = sum(sizes.values())
    while keep and total > policy.cache_max_bytes:
        signature, refs = keep.pop(0)  # least recently used first
        store.cache_delete(signature)
        report.cache_entries_removed += 1
        still_used = {digest for _, other in keep for digest, _ in other}
        for digest, _ in refs:
            if digest not in still_used and digest in sizes:
                total -= sizes.pop(digest)
    referenced = {digest for _, refs in keep for digest, _ in refs}

    tensors = f"{artifacts.root}/tensors"
    if artifacts.fs.exists(tensors):
        for path, info in artifacts.fs.find(tensors, detail=True).items():
            digest = path.rsplit("/", 1)[-1].split(".", 1)[0]
            modified = _modified(info, now)
            if digest not in referenced and modified < now - policy.artifact_grace_s:
                artifacts.fs.rm(path)
                report.artifacts_removed += 1
                report.bytes_freed += int(info.get("size", 0))

    if files is not None and not files.local:
        _expire_shared(files, policy, now, report)
    else:
        _expire_local(files.root if isinstance(files, LocalFiles) else home, policy, now, report)
    if report.cache_entries_removed or report.artifacts_removed or report.files_removed \
            or report.receipt_folders_removed:
        log.info("retention pass", extra=log_fields(cache_entries=report.cache_entries_removed,
                                                    artifacts=report.artifacts_removed,
                                                    files=len(report.files_removed), bytes=report.bytes_freed,
                                                    receipt_folders=report.receipt_folders_removed))
    return report
