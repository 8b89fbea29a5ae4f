"""The files store's backends against one contract: the data home's folders and a real S3 server (SeaweedFS,
which checks signatures), plus the keys clients may name and the URL schemes accepted."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from comfymesh.config import Settings
from comfymesh.files import BadKey, FilesStore, FilesUnavailable, LocalFiles, S3Files, open_files, safe_key
from tests.seaweedfs import BUCKET, SeaweedServer, seaweedfs  # noqa: F401 (fixture)


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FilesStore]:
    if request.param == "file":
        yield open_files(tmp_path.as_uri())
        return
    server: SeaweedServer = request.getfixturevalue("seaweedfs")
    yield open_files(server.new_url(), server.options())


def test_write_read_list_delete(store: FilesStore) -> None:
    store.write("output/sub/a.png", b"first")
    store.write("output/sub/a.png", b"second")  # a write replaces
    store.write("input/b.png", b"bb")
    assert store.read("output/sub/a.png") == b"second"
    entries = {entry.key: entry for entry in store.entries("output")}
    assert set(entries) == {"output/sub/a.png"}
    assert entries["output/sub/a.png"].size == 6 and entries["output/sub/a.png"].modified > 1.7e9
    store.delete("output/sub/a.png")
    store.delete("output/sub/a.png")  # gone already: no error
    assert not store.exists("output/sub/a.png")
    with pytest.raises(FileNotFoundError):
        store.read("output/sub/a.png")
    assert store.entries("nothing") == []


def test_claim_takes_a_free_name_once(store: FilesStore) -> None:
    assert store.claim("input/x.png", b"one")
    assert not store.claim("input/x.png", b"two")
    assert store.read("input/x.png") == b"one"


def test_another_clients_delete_shows_at_once(seaweedfs: SeaweedServer) -> None:  # noqa: F811
    url = seaweedfs.new_url()
    store = open_files(url, seaweedfs.options())
    store.write("output/a.png", b"x")
    assert store.exists("output/a.png") and len(store.entries("output")) == 1
    seaweedfs.client().delete_object(Bucket=BUCKET, Key=f"{url.rsplit('/', 1)[1]}/output/a.png")
    assert not store.exists("output/a.png")
    assert store.entries("output") == []


def test_presigned_url_serves_and_refuses_tampering(seaweedfs: SeaweedServer) -> None:  # noqa: F811
    store = open_files(seaweedfs.new_url(), seaweedfs.options())
    store.write("output/a.png", b"png bytes")
    url = store.presign("output/a.png", 60)
    assert url is not None and httpx.get(url).content == b"png bytes"
    tampered = url.replace("output/a.png", "output/b.png")
    assert httpx.get(tampered).status_code == 403  # the server checks the signature
    assert httpx.get(url.replace("Signature=", "Signature=0")).status_code == 403


def test_wrong_secret_and_missing_bucket_name_the_s3_error(seaweedfs: SeaweedServer) -> None:  # noqa: F811
    url = seaweedfs.new_url()
    open_files(url, seaweedfs.options()).check()
    with pytest.raises(FilesUnavailable) as wrong:
        open_files(url, seaweedfs.options(secret="not-the-secret")).check()
    assert wrong.value.code == "SignatureDoesNotMatch"
    with pytest.raises(FilesUnavailable) as missing:
        open_files("s3://no-such-bucket-here/p", seaweedfs.options()).check()
    assert missing.value.code == "NoSuchBucket"


def test_local_store_is_the_data_home(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    store = open_files(settings.files)
    assert isinstance(store, LocalFiles) and store.root == tmp_path and store.local
    store.write("output/a.png", b"x")
    assert (tmp_path / "output" / "a.png").read_bytes() == b"x"
    assert store.presign("output/a.png", 60) is None
    assert isinstance(open_files("s3://bucket/p", {"key": "k", "secret": "s"}), S3Files)


def test_unknown_scheme_lists_the_accepted_ones() -> None:
    with pytest.raises(ValidationError, match=r"use one of file://, s3://"):
        Settings(files_url="gs://bucket/prefix")
    with pytest.raises(ValueError, match=r"use one of file://, s3://"):
        open_files("ftp://host/dir")


@pytest.mark.parametrize(("subfolder", "name"), [("", "../x.png"), ("..", "x.png"), ("a/../..", "x.png"),
                                                 ("/etc", "passwd"), ("", "/etc/passwd"), ("", "a\x00.png"),
                                                 ("", "")])
def test_keys_leaving_their_folder_are_refused(subfolder: str, name: str) -> None:
    with pytest.raises(BadKey):
        safe_key("output", subfolder, name)


def test_keys() -> None:
    assert safe_key("output", "", "a.png") == "output/a.png"
    assert safe_key("input", "sub/deeper", "a.png") == "input/sub/deeper/a.png"
    assert safe_key("temp", "a/./b", "c.png") == "temp/a/b/c.png"
    with pytest.raises(BadKey):
        safe_key("models", "", "a.png")


def test_an_expired_presigned_url_is_refused(seaweedfs: SeaweedServer) -> None:  # noqa: F811
    store = open_files(seaweedfs.new_url(), seaweedfs.options())
    store.write("output/a.png", b"x")
    url = store.presign("output/a.png", 1)
    assert url is not None
    deadline = time.monotonic() + 10
    while httpx.get(url).status_code == 200:  # valid for its one second, then refused by the server
        assert time.monotonic() < deadline, "the presigned URL never expired"
        time.sleep(0.2)  # the poll's interval
    assert httpx.get(url).status_code == 403


def test_a_local_files_url_must_be_the_data_home(tmp_path: Path) -> None:
    from comfymesh.config import configuration_problems

    assert Settings(home=tmp_path, files_url=tmp_path.as_uri()).files == tmp_path.as_uri()
    with pytest.raises(ValidationError) as refused:
        Settings(home=tmp_path, files_url=(tmp_path / "elsewhere").as_uri())
    problems = configuration_problems(refused.value)
    assert "\n  COMFYMESH_FILES_URL: a file:// URL must name the data home" in problems
