"""File digests are hashed once and remembered across processes, until the file changes."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfymesh.catalog import files
from comfymesh.config import get_settings


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("COMFYMESH_HOME", str(tmp_path))
    get_settings.cache_clear()
    monkeypatch.setattr(files, "_digests", None)
    yield tmp_path
    get_settings.cache_clear()


def test_a_restarted_process_reuses_the_recorded_digest(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "PERSIST_MIN_BYTES", 1024)  # a small stand-in for a multi-GB checkpoint
    model = home / "models" / "checkpoints" / "a.safetensors"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"weights" * 1000)
    digest = files.file_digest(model)
    assert digest == hashlib.sha256(model.read_bytes()).hexdigest()
    recorded = json.loads((home / "cache" / "digests.json").read_text())
    assert recorded[str(model.resolve())][3] == digest

    # a new process: nothing in memory, and hashing is not allowed to happen
    monkeypatch.setattr(files, "_digests", None)

    def no_hashing(*args: object) -> object:
        raise AssertionError("hashed again")

    real_sha256 = hashlib.sha256
    monkeypatch.setattr(files.hashlib, "sha256", no_hashing)
    assert files.file_digest(model) == digest

    # the file changes (size and mtime): hashed again
    monkeypatch.setattr(files.hashlib, "sha256", real_sha256)
    model.write_bytes(b"other weights")
    os.utime(model, ns=(1, 1))
    assert files.file_digest(model) == real_sha256(b"other weights").hexdigest()


def test_a_damaged_record_only_costs_a_rehash(home: Path) -> None:
    (home / "cache").mkdir()
    (home / "cache" / "digests.json").write_text("{not json")
    data = home / "x.bin"
    data.write_bytes(b"abc")
    assert files.file_digest(data) == hashlib.sha256(b"abc").hexdigest()


def test_small_files_are_not_recorded(home: Path) -> None:
    image = home / "input" / "photo.png"
    image.parent.mkdir()
    image.write_bytes(b"png" * 100)
    assert files.file_digest(image) == hashlib.sha256(b"png" * 100).hexdigest()
    assert not (home / "cache" / "digests.json").exists()
