"""SaveImage's files in a shared S3 store (SeaweedFS): ComfyUI's names and counter claimed by the store, so
writers on several hosts never take one name, and receipts that give a retried node its first files back."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from comfymesh.files import FilesStore, open_files
from comfymesh.outputs import OutputIdentity, write_pngs
from tests.seaweedfs import SeaweedServer, seaweedfs  # noqa: F401 (fixture)


@pytest.fixture
def shared_url(seaweedfs: SeaweedServer) -> str:  # noqa: F811
    return seaweedfs.new_url()


def _host(seaweedfs: SeaweedServer, url: str) -> FilesStore:  # noqa: F811
    """A store as another host opens it: its own client, nothing shared in memory but the bucket."""
    return open_files(url, seaweedfs.options())


def _images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 8, 8, 3), dtype=np.float32)


def test_names_and_counter_follow_comfyui(seaweedfs: SeaweedServer, shared_url: str, tmp_path: Path) -> None:  # noqa: F811
    files = _host(seaweedfs, shared_url)
    first = write_pngs(_images(2), tmp_path, "run/cat", files=files)
    assert [(s.filename, s.subfolder, s.type) for s in first] == [("cat_00001_.png", "run", "output"),
                                                                  ("cat_00002_.png", "run", "output")]
    assert files.read("output/run/cat_00001_.png").startswith(b"\x89PNG")
    other = _host(seaweedfs, shared_url)  # a second host lists the store, not its own memory
    assert write_pngs(_images(1), tmp_path, "run/cat", files=other)[0].filename == "cat_00003_.png"
    assert write_pngs(_images(1), tmp_path, "run/cat", files=files)[0].filename == "cat_00004_.png"
    assert not (tmp_path / "output").exists()  # nothing on the local disk


def test_a_retried_node_gets_its_first_files(seaweedfs: SeaweedServer, shared_url: str, tmp_path: Path) -> None:  # noqa: F811
    identity = OutputIdentity("job-1", "9")
    first = write_pngs(_images(2), tmp_path, "r", files=_host(seaweedfs, shared_url), identity=identity)
    again = write_pngs(_images(2, seed=1), tmp_path, "r", files=_host(seaweedfs, shared_url), identity=identity)
    assert again == first
    files = _host(seaweedfs, shared_url)
    assert sorted(e.key for e in files.entries("output")) == ["output/r_00001_.png", "output/r_00002_.png"]
    files.delete("output/r_00002_.png")  # an attempt died between its files: the retry finishes the same names
    assert write_pngs(_images(2), tmp_path, "r", files=files, identity=identity) == first
    assert files.exists("output/r_00002_.png")
    # another node of the job takes new names
    assert write_pngs(_images(1), tmp_path, "r", files=files,
                      identity=OutputIdentity("job-1", "10"))[0].filename == "r_00003_.png"


def test_hosts_saving_at_once_never_share_a_name(seaweedfs: SeaweedServer, shared_url: str,  # noqa: F811
                                                 tmp_path: Path) -> None:
    hosts = [_host(seaweedfs, shared_url) for _ in range(4)]

    def save(index: int) -> list[str]:
        return [s.filename for s in write_pngs(_images(2, seed=index), tmp_path, "same",
                                               files=hosts[index % 4])]

    with ThreadPoolExecutor(8) as pool:
        names = [name for batch in pool.map(save, range(8)) for name in batch]
    assert len(set(names)) == 16
    stored = {e.key.rsplit("/", 1)[1] for e in hosts[0].entries("output")}
    assert stored == set(names)
