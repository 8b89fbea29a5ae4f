"""Retention passes on a real store and real files: age, size budget, unreferenced artifacts, temp files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from google.protobuf import json_format

from comfymesh.artifacts import ArtifactStore, encode_value
from comfymesh.jobs import JobStore
from comfymesh.orchestrator.retention import RetentionPolicy, collect


def cached(store: JobStore, artifacts: ArtifactStore, signature: str, seed: int, size: int = 32) -> Path:
    image = np.random.default_rng(seed).random((1, size, size, 3), dtype=np.float32)
    value = encode_value("IMAGE", image, artifacts)
    store.cache_put(signature, "ImageInvert", [json_format.MessageToDict(value, preserving_proto_field_name=True)],
                    None)
    return Path(value.tensor.uri.removeprefix("file://"))


def age(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_old_entries_and_unreferenced_artifacts_go(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    artifacts = ArtifactStore((tmp_path / "artifacts").as_uri())
    kept = cached(store, artifacts, "recent", 1)
    expired = cached(store, artifacts, "old", 2)
    store._db.execute("UPDATE node_cache SET last_used = ? WHERE signature = 'old'", (time.time() - 10 * 86400,))
    for path in (kept, expired):
        age(path, 7200)
    report = collect(store, artifacts, tmp_path, RetentionPolicy(cache_max_age_s=86400))
    assert report.cache_entries_removed == 1 and report.artifacts_removed == 1
    assert store.cache_get("old") is None and store.cache_get("recent") is not None
    assert kept.exists() and not expired.exists()


def test_size_budget_drops_least_recently_used_first(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    artifacts = ArtifactStore((tmp_path / "artifacts").as_uri())
    paths = [cached(store, artifacts, f"s{i}", i, size=64) for i in range(3)]
    for i in range(3):
        store._db.execute("UPDATE node_cache SET last_used = ? WHERE signature = ?", (1000.0 + i, f"s{i}"))
        age(paths[i], 7200)
    one = paths[0].stat().st_size
    collect(store, artifacts, tmp_path, RetentionPolicy(cache_max_bytes=2 * one + 10, cache_max_age_s=0))
    assert [store.cache_get(f"s{i}") is not None for i in range(3)] == [False, True, True]
    assert [p.exists() for p in paths] == [False, True, True]


def test_young_unreferenced_artifacts_are_spared_and_temp_files_expire(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    artifacts = ArtifactStore((tmp_path / "artifacts").as_uri())
    in_flight = Path(encode_value("IMAGE", np.zeros((1, 4, 4, 3), np.float32), artifacts).tensor.uri[7:])
    (tmp_path / "temp").mkdir()
    old_preview, new_preview = tmp_path / "temp" / "a.png", tmp_path / "temp" / "b.png"
    old_preview.write_bytes(b"x")
    new_preview.write_bytes(b"y")
    age(old_preview, 2 * 86400)
    (tmp_path / "output").mkdir()
    (tmp_path / "output" / "keep.png").write_bytes(b"z")
    age(tmp_path / "output" / "keep.png", 400 * 86400)
    collect(store, artifacts, tmp_path, RetentionPolicy())
    assert in_flight.exists()
    assert not old_preview.exists() and new_preview.exists()
    assert (tmp_path / "output" / "keep.png").exists()  # outputs are kept unless a max age is set


def test_receipts_of_jobs_that_can_no_longer_retry_go(tmp_path: Path) -> None:
    from comfymesh.outputs import OutputIdentity, write_pngs

    image = np.zeros((1, 4, 4, 3), np.float32)
    write_pngs(image, tmp_path, "old", identity=OutputIdentity("job-old", "9"))
    write_pngs(image, tmp_path, "new", identity=OutputIdentity("job-new", "9"))
    folders = sorted((tmp_path / ".outputs" / "receipts").iterdir(), key=lambda f: f.stat().st_mtime)
    assert len(folders) == 2
    age(folders[0], 9 * 86400)
    store = JobStore(tmp_path / "jobs.db")
    report = collect(store, ArtifactStore((tmp_path / "artifacts").as_uri()), tmp_path, RetentionPolicy())
    assert report.receipt_folders_removed == 1
    assert not folders[0].exists() and folders[1].exists()
    assert len(list((tmp_path / "output").iterdir())) == 2  # the images themselves stay
