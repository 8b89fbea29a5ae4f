"""Shared fixtures: a real mesh on loopback (module-scoped: starting processes costs seconds)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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


@pytest.fixture(scope="session")
def demo_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """A fresh machine's first run: `comfymesh demo` into an empty data folder, then the whole mesh on it. Shared
    by the CLI and browser tests of the templates (a template one of them ran comes from the node cache for the
    other, which then checks its own path: the prompt it makes equals the other's, node for node)."""
    home = tmp_path_factory.mktemp("fresh-home")
    demo = subprocess.run([sys.executable, "-m", "comfymesh.cli.main", "demo"], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "COMFYMESH_HOME": str(home)})
    assert demo.returncode == 0, demo.stderr
    assert "every image they make is noise" in demo.stderr and "comfymesh models pull" in demo.stderr
    mesh = Mesh(home, stages=("imaging", "diffusion"))
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
