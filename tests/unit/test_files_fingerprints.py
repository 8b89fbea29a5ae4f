"""Cache signatures over a shared files store (SeaweedFS): LoadImage's file is fingerprinted by its object's
version, so a re-upload under the same name misses the cache and the same bytes hit it."""

from __future__ import annotations

from pathlib import Path

from comfymesh.catalog import Catalog
from comfymesh.files import open_files
from comfymesh.orchestrator.planning import fingerprint_files
from tests.catalogs import builtin_nodes
from tests.seaweedfs import SeaweedServer, seaweedfs  # noqa: F401 (fixture)


def test_input_images_are_fingerprinted_in_the_store(seaweedfs: SeaweedServer, tmp_path: Path) -> None:  # noqa: F811
    files = open_files(seaweedfs.new_url(), seaweedfs.options())
    fingerprint = fingerprint_files(Catalog(tmp_path, builtin_nodes().object_info()), files)
    files.write("input/cat.png", b"first")
    first = fingerprint("LoadImage", {"image": "cat.png"})
    assert first.startswith("image=object:") and first == fingerprint("LoadImage", {"image": "cat.png"})
    files.write("input/cat.png", b"second")
    second = fingerprint("LoadImage", {"image": "cat.png"})
    assert second != first
    files.write("input/cat.png", b"first")
    assert fingerprint("LoadImage", {"image": "cat.png"}) == first  # the ETag is the content's
    assert fingerprint("LoadImage", {"image": "missing.png"}) == ""
    assert fingerprint("LoadImage", {"image": "../../etc/passwd"}) == ""


def test_load_image_lists_the_stores_input_folder(seaweedfs: SeaweedServer, tmp_path: Path) -> None:  # noqa: F811
    files = open_files(seaweedfs.new_url(), seaweedfs.options())
    for key in ("input/b.png", "input/a.jpg", "input/notes.txt", "input/x.latent", "input/sub/deep.png"):
        files.write(key, b"x")
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "local.png").write_bytes(b"x")  # the data home's folder is not what is listed
    catalog = Catalog(tmp_path, builtin_nodes().object_info(), files=files)
    assert catalog.input_images() == ["a.jpg", "b.png"] and catalog.input_latents() == ["x.latent"]
    assert Catalog(tmp_path, {}).input_images() == ["local.png"]
