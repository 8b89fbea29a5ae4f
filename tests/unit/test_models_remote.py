"""Model folders in S3 (COMFYMESH_MODELS_URL=s3://, a real SeaweedFS): the listing every service reads, a host's
content-addressed copies checked against the digest a handle names, the digest rows GET /v1/checkpoints reads,
and the errors of a wrong scheme, secret or bucket."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from comfymesh.catalog import Catalog
from comfymesh.catalog.model_folders import ModelFolders, model_folders
from comfymesh.config import Settings
from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.nodes.model_files import resolve_file
from comfymesh.files import FilesUnavailable, files_problem, open_files
from comfymesh.jobs.sqlite_backend import SqliteJobStore
from comfymesh.models import HostModelCache, ModelDigestMismatch, RemoteModels
from comfymesh.orchestrator.model_listing import list_models, model_digest
from comfymesh.stage.node import NodeContext
from tests.seaweedfs import SeaweedServer, seaweedfs  # noqa: F401 (fixture)

CHECKPOINT = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + os.urandom(4096)  # bytes, not a loadable model


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def bucket(seaweedfs: SeaweedServer, tmp_path: Path) -> tuple[ModelFolders, str]:  # noqa: F811
    url = seaweedfs.new_url()
    store = open_files(url, seaweedfs.options())
    store.write("checkpoints/sd15.safetensors", CHECKPOINT)
    store.write("checkpoints/sub/other.safetensors", b"other")
    store.write("checkpoints/notes.txt", b"not a model")
    store.write("clip/te.safetensors", b"text encoder")  # ComfyUI's alias of text_encoders
    settings = Settings(home=tmp_path / "home", models_url=url,
                        models_storage_options=json.dumps(seaweedfs.options()))  # type: ignore[arg-type]
    return model_folders(settings), url


def test_the_bucket_is_listed_as_the_folders_are(bucket: tuple[ModelFolders, str]) -> None:
    folders, url = bucket
    catalog = Catalog(folders.home, {}, folders)
    assert catalog.model_files("checkpoints") == ["sd15.safetensors", "sub/other.safetensors"]
    assert catalog.model_files("text_encoders") == ["te.safetensors"]
    listed = list_models(catalog, "checkpoints")
    assert [(m.name, m.size, m.location) for m in listed] == [
        ("sd15.safetensors", len(CHECKPOINT), f"{url}/checkpoints"), ("sub/other.safetensors", 5, f"{url}/checkpoints")]
    assert folders.sizes("checkpoints") == [("sd15.safetensors", len(CHECKPOINT)), ("sub/other.safetensors", 5)]
    assert folders.cache is not None and not folders.cache.root.exists()  # listed, nothing fetched
    assert folders.resolve("checkpoints", "../clip/te.safetensors") is None  # never outside its folder
    assert folders.resolve("checkpoints", "notes.txt") is None


def test_a_host_keeps_one_copy_by_digest_and_refetches_a_tampered_one(bucket: tuple[ModelFolders, str]) -> None:
    folders, _ = bucket
    assert folders.cache is not None
    path = folders.resolve("checkpoints", "sd15.safetensors")
    assert path == folders.cache.root / sha(CHECKPOINT) / "sd15.safetensors"
    assert path.read_bytes() == CHECKPOINT
    assert folders.fetch("checkpoints", "sd15.safetensors", sha(CHECKPOINT)) == path
    path.write_bytes(b"tampered" + CHECKPOINT[8:])
    again = folders.fetch("checkpoints", "sd15.safetensors", sha(CHECKPOINT))
    assert again == path and path.read_bytes() == CHECKPOINT  # dropped, fetched again, checked
    assert [p.name for p in folders.cache.root.iterdir() if not p.name.startswith(".")] == [sha(CHECKPOINT)]


def test_a_changed_object_is_refused_for_an_older_handle(bucket: tuple[ModelFolders, str]) -> None:
    folders, _ = bucket
    assert folders.cache is not None and folders.remote is not None
    old = sha(CHECKPOINT)
    folders.remote.store.write("checkpoints/sd15.safetensors", b"new bytes")
    ctx = NodeContext(job_id="j", node_id="4", class_type="KSampler", home=folders.home, model_folders=folders)
    with pytest.raises(ModelError) as refused:
        resolve_file(ctx, "checkpoints", "sd15.safetensors", old)  # no copy here yet: the bucket's bytes are new
    message = str(refused.value)
    assert "sd15.safetensors" in message and old in message and sha(b"new bytes") in message
    assert not (folders.cache.root / sha(b"new bytes")).exists()  # the refused copy is dropped
    assert resolve_file(ctx, "checkpoints", "sd15.safetensors").read_bytes() == b"new bytes"  # a loader: current


def test_the_cache_keeps_to_its_budget(bucket: tuple[ModelFolders, str], tmp_path: Path) -> None:
    folders, _ = bucket
    assert folders.remote is not None
    cache = HostModelCache(tmp_path / "cache", budget=len(CHECKPOINT) + 2)  # not both
    first = cache.fetch(folders.remote, "checkpoints/sub/other.safetensors")
    os.utime(first.parent, (1, 1))  # used long ago
    kept = cache.fetch(folders.remote, "checkpoints/sd15.safetensors")
    assert kept.is_file() and not first.exists()
    with pytest.raises(ModelDigestMismatch):
        cache.fetch(folders.remote, "checkpoints/sub/other.safetensors", expected="0" * 64)


async def test_digests_are_hashed_once_per_version_and_recorded(bucket: tuple[ModelFolders, str],
                                                                tmp_path: Path) -> None:
    folders, url = bucket
    assert folders.remote is not None
    catalog = Catalog(folders.home, {}, folders)
    store = SqliteJobStore(tmp_path / "jobs.db")
    try:
        model = list_models(catalog, "checkpoints")[0]
        assert await model_digest(store, catalog, model) == sha(CHECKPOINT)
        version = folders.remote.version(model.key)
        assert await store.model_digest(f"{url}/checkpoints", "sd15.safetensors", version) == sha(CHECKPOINT)
        folders.remote.store.write("checkpoints/sd15.safetensors", b"v2")
        assert await model_digest(store, catalog, list_models(catalog, "checkpoints")[0]) == sha(b"v2")
    finally:
        await store.close()


async def test_local_digests_are_recorded_by_file_and_version(tmp_path: Path) -> None:
    checkpoint = tmp_path / "home" / "models" / "checkpoints" / "sub" / "a.safetensors"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"local bytes")
    folders = model_folders(Settings(home=tmp_path / "home"))  # type: ignore[arg-type]
    catalog = Catalog(folders.home, {}, folders)
    store = SqliteJobStore(tmp_path / "jobs.db")
    try:
        [model] = list_models(catalog, "checkpoints")
        assert (model.name, model.size) == ("sub/a.safetensors", 11)
        assert await model_digest(store, catalog, model) == sha(b"local bytes")
        stat = checkpoint.stat()
        assert await store.model_digest(checkpoint.parent.as_uri(), "a.safetensors",
                                        f"{stat.st_size}:{stat.st_mtime_ns}") == sha(b"local bytes")
    finally:
        await store.close()


def test_an_unknown_scheme_names_the_accepted_ones() -> None:
    with pytest.raises(ValidationError, match=r"gs:// is not accepted; use one of file://, s3://"):
        Settings(models_url="gs://bucket/models")  # type: ignore[arg-type]


def test_a_file_url_names_another_models_folder(tmp_path: Path) -> None:
    (tmp_path / "shared" / "checkpoints").mkdir(parents=True)
    (tmp_path / "shared" / "checkpoints" / "a.safetensors").write_bytes(b"a")
    folders = model_folders(Settings(home=tmp_path / "home",  # type: ignore[arg-type]
                                     models_url=(tmp_path / "shared").as_uri()))
    assert Catalog(folders.home, {}, folders).model_files("checkpoints") == ["a.safetensors"]
    assert folders.sizes("checkpoints") == [("a.safetensors", 1)]


@pytest.mark.parametrize(("secret", "bucket_name", "code"), [
    ("wrong-secret-0123456789", None, "SignatureDoesNotMatch"), (None, "no-such-bucket-x", "NoSuchBucket")])
def test_a_wrong_secret_or_missing_bucket_is_named(seaweedfs: SeaweedServer, secret: str | None,  # noqa: F811
                                                   bucket_name: str | None, code: str) -> None:
    url = f"s3://{bucket_name}/models" if bucket_name else seaweedfs.new_url()
    remote = RemoteModels(url, seaweedfs.options(**({"secret": secret} if secret else {})))
    with pytest.raises(FilesUnavailable) as failed:
        remote.check()
    assert failed.value.code == code
    assert files_problem(remote.store) is not None
