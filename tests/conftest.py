"""Shared fixtures: a real mesh on loopback (module-scoped: starting processes costs seconds)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mesh import SHARED, Mesh

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def imaging_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("home")
    mesh = Mesh(home, stages=("imaging",))
    shutil.copy(SHARED / "data" / "astronaut.png", home / "input" / "example.png")
    shutil.copy(SHARED / "data" / "coffee.png", home / "input" / "coffee.png")
    try:
        yield mesh.start()
    finally:
        mesh.stop()


@pytest.fixture
def shared() -> Path:
    return SHARED
