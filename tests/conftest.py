"""Shared fixtures: a real mesh on loopback (module-scoped: starting processes costs seconds)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from comfymesh.config import Settings, get_settings
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
def configure(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Settings]]:
    """`configure(trace="1", ...)`: set those COMFYMESH_* variables for this test and read the process's
    settings again, as a service started with them would (both undone afterwards)."""

    def apply(**values: str) -> Settings:
        for name, value in values.items():
            monkeypatch.setenv(f"COMFYMESH_{name.upper()}", value)
        get_settings.cache_clear()
        return get_settings()

    yield apply
    get_settings.cache_clear()  # before monkeypatch restores the variables: the next read sees them restored


@pytest.fixture
def shared() -> Path:
    return SHARED
