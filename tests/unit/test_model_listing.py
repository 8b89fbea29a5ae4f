"""The model-file listing every submit validates against is kept, and follows the folder's changes."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.catalogs import builtin_catalog


def _age(path: Path, seconds: float) -> None:
    past = time.time_ns() - int(seconds * 1e9)
    os.utime(path, ns=(past, past))


def test_listing_is_kept_until_a_directory_changes(tmp_path: Path) -> None:
    root = tmp_path / "models" / "checkpoints"
    (root / "sub").mkdir(parents=True)
    (root / "a.safetensors").write_bytes(b"x")
    (root / "sub" / "b.safetensors").write_bytes(b"x")
    (root / "notes.txt").write_text("not a model")
    for folder in (root / "sub", root):
        _age(folder, 60)
    catalog = builtin_catalog(tmp_path)
    assert catalog.model_files("checkpoints") == ["a.safetensors", "sub/b.safetensors"]

    # a file appearing without its directory's mtime moving is not seen: proof the listing was kept
    before = root.stat().st_mtime_ns
    (root / "hidden.safetensors").write_bytes(b"x")
    os.utime(root, ns=(before, before))
    assert catalog.model_files("checkpoints") == ["a.safetensors", "sub/b.safetensors"]

    # an ordinary add in a subfolder changes that folder's mtime: seen at once
    (root / "sub" / "c.safetensors").write_bytes(b"x")
    assert catalog.model_files("checkpoints") == ["a.safetensors", "hidden.safetensors", "sub/b.safetensors",
                                                  "sub/c.safetensors"]
    # a listing of just-changed folders is not kept: a second change in the same clock tick shows too
    (root / "sub" / "d.safetensors").write_bytes(b"x")
    _age(root / "sub", -0.0)  # mtime "now", as coarse as the kernel's clock may leave it
    assert "sub/d.safetensors" in catalog.model_files("checkpoints")


def test_a_missing_folder_lists_nothing_until_it_appears(tmp_path: Path) -> None:
    catalog = builtin_catalog(tmp_path)
    assert catalog.model_files("loras") == []
    (tmp_path / "models" / "loras").mkdir(parents=True)
    (tmp_path / "models" / "loras" / "style.safetensors").write_bytes(b"x")
    assert catalog.model_files("loras") == ["style.safetensors"]
