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


def test_a_digest_another_process_recorded_is_found_without_hashing(home: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The orchestrator hashes a model for its cache keys; the stage that loads it next finds that digest in the
    file instead of reading tens of GiB again, and each process's save keeps the other's entries."""
    monkeypatch.setattr(files, "PERSIST_MIN_BYTES", 1024)
    first, second = home / "a.safetensors", home / "b.safetensors"
    first.write_bytes(b"a" * 2000)
    second.write_bytes(b"b" * 2000)
    assert files.known_digest(second) is None  # this process has loaded the (empty) record: a real miss next
    # another process hashes `first` and records it
    mine = files._known_digests()
    monkeypatch.setattr(files, "_digests", {})
    digest = files.file_digest(first)
    monkeypatch.setattr(files, "_digests", mine)

    real_sha256 = hashlib.sha256
    monkeypatch.setattr(files.hashlib, "sha256", lambda *a: pytest.fail("hashed again"))
    assert files.known_digest(first) == files.file_digest(first) == digest
    monkeypatch.setattr(files.hashlib, "sha256", real_sha256)
    monkeypatch.setattr(files, "_digests", {})  # a third process, which knows only `second`
    files.file_digest(second)
    recorded = json.loads((home / "cache" / "digests.json").read_text())
    assert {Path(key).name for key in recorded} == {"a.safetensors", "b.safetensors"}


def test_the_cache_keys_tell_a_file_not_hashed_yet(home: Path) -> None:
    """Signing on the event loop asks for known digests only; a new file sends the signing off the loop."""
    from comfymesh.catalog import Catalog
    from comfymesh.orchestrator.planning import DigestPending, fingerprint_files
    from tests.catalogs import builtin_nodes

    (home / "input").mkdir()
    (home / "input" / "cat.png").write_bytes(b"png bytes")
    catalog = Catalog(home, builtin_nodes().object_info())
    with pytest.raises(DigestPending, match=r"cat\.png"):
        fingerprint_files(catalog, hash_files=False)("LoadImage", {"image": "cat.png"})
    hashed = fingerprint_files(catalog)("LoadImage", {"image": "cat.png"})
    assert hashed == f"image={hashlib.sha256(b'png bytes').hexdigest()}"
    assert fingerprint_files(catalog, hash_files=False)("LoadImage", {"image": "cat.png"}) == hashed


def test_two_readers_of_a_new_file_hash_it_once(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two jobs meeting the same new model at once (each signing in its own worker thread): one reads it, the
    other waits for that digest instead of reading tens of GiB again beside it."""
    import threading

    model = home / "model.safetensors"
    model.write_bytes(b"weights" * 100)
    real_sha256 = hashlib.sha256
    hashes: list[int] = []
    second: dict[str, str] = {}
    other = threading.Thread(target=lambda: second.update(digest=files.file_digest(model)))

    def sha256_starting_the_other(*args: object) -> object:
        if not args:  # a file's hash
            hashes.append(1)
            if len(hashes) == 1:  # while the first reader hashes, the second one asks
                other.start()
                other.join(timeout=0.5)  # it waits for the first (without the lock it would hash and finish)
        return real_sha256(*args)

    monkeypatch.setattr(files.hashlib, "sha256", sha256_starting_the_other)
    first = files.file_digest(model)
    other.join(timeout=10)
    assert not other.is_alive() and second["digest"] == first == real_sha256(model.read_bytes()).hexdigest()
    assert len(hashes) == 1
