"""The gateway over an s3:// files store (SeaweedFS): /view streams the object or redirects to a presigned URL
the S3 server checks, unknown names are 404, paths leaving their folder are refused, and /readyz is 503 with
the S3 error code while the store refuses the gateway's credentials or its bucket is missing."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from comfymesh.config import Settings
from comfymesh.files import open_files
from comfymesh.gateway.app import create_app
from comfymesh.gateway.engine import Readiness
from tests.seaweedfs import SeaweedServer, seaweedfs  # noqa: F401 (fixture)


class _ReadyEngine:
    """The orchestrator's side of /readyz only: every stage healthy, so the files store decides."""

    async def readiness(self) -> Readiness:
        return Readiness(orchestrator=True)

    async def close(self) -> None:
        return None


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def _client(tmp_path: Path, url: str, options: dict[str, Any], **settings: Any) -> TestClient:
    app = create_app(Settings(home=tmp_path, files_url=url, files_storage_options=json.dumps(options), **settings),
                     engine=cast(Any, _ReadyEngine()))
    return TestClient(app, base_url="http://127.0.0.1", follow_redirects=False)


@pytest.fixture
def stored(seaweedfs: SeaweedServer) -> Iterator[tuple[str, bytes]]:  # noqa: F811
    url = seaweedfs.new_url()
    data = _png()
    open_files(url, seaweedfs.options()).write("output/run/a_00001_.png", data)
    yield url, data


def test_view_streams_the_object(seaweedfs: SeaweedServer, stored: tuple[str, bytes], tmp_path: Path) -> None:  # noqa: F811
    url, data = stored
    with _client(tmp_path, url, seaweedfs.options()) as client:
        answer = client.get("/view", params={"filename": "a_00001_.png", "subfolder": "run", "type": "output"})
        assert answer.status_code == 200 and answer.content == data
        assert answer.headers["content-type"] == "image/png"
        preview = client.get("/api/view", params={"filename": "a_00001_.png", "subfolder": "run",
                                                  "preview": "jpeg;80", "channel": "rgb"})
        assert preview.status_code == 200 and preview.headers["content-type"] == "image/jpeg"
        assert client.get("/view", params={"filename": "missing.png", "subfolder": "run"}).status_code == 404
        assert client.get("/view", params={"filename": "a.png", "subfolder": "../../etc"}).status_code == 403
        assert client.get("/view", params={"filename": "../a_00001_.png"}).status_code == 400
        assert client.get("/readyz").status_code == 200


def test_view_redirects_to_a_presigned_url(seaweedfs: SeaweedServer, stored: tuple[str, bytes],  # noqa: F811
                                           tmp_path: Path) -> None:
    url, data = stored
    with _client(tmp_path, url, seaweedfs.options(), files_view_redirect=True) as client:
        answer = client.get("/view", params={"filename": "a_00001_.png", "subfolder": "run"})
        assert answer.status_code == 307
        signed = answer.headers["location"]
        assert httpx.get(signed).content == data
        assert httpx.get(signed.replace("a_00001_", "a_00002_")).status_code == 403  # tampered
        assert client.get("/view", params={"filename": "nope.png", "subfolder": "run"}).status_code == 404


def test_readyz_is_503_with_a_wrong_secret_or_no_bucket(seaweedfs: SeaweedServer, tmp_path: Path,  # noqa: F811
                                                        caplog: pytest.LogCaptureFixture) -> None:
    with _client(tmp_path, seaweedfs.new_url(), seaweedfs.options(secret="wrong-secret-0123456789")) as client:
        answer = client.get("/readyz")
        assert answer.status_code == 503 and answer.json()["status"] == "files store unavailable (SignatureDoesNotMatch)"
    assert any(getattr(r, "fields", {}).get("s3_error") == "SignatureDoesNotMatch" for r in caplog.records)
    with _client(tmp_path, "s3://no-bucket-here/p", seaweedfs.options()) as client:
        assert client.get("/readyz").json()["status"] == "files store unavailable (NoSuchBucket)"


def test_file_url_default_serves_the_data_home(tmp_path: Path) -> None:
    (tmp_path / "output").mkdir()
    (tmp_path / "output" / "a.png").write_bytes(_png())
    app = create_app(Settings(home=tmp_path), engine=cast(Any, _ReadyEngine()))
    assert app.state.files is None
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert client.get("/view", params={"filename": "a.png"}).content == _png()


def _upload(client: TestClient, name: str, data: bytes, **form: str) -> Any:
    return client.post("/upload/image", files={"image": (name, data, "image/png")}, data=form)


def test_uploads_claim_their_names_in_the_store(seaweedfs: SeaweedServer, tmp_path: Path) -> None:  # noqa: F811
    url = seaweedfs.new_url()
    first, other = _png(), _png()[:-1] + b"\x01"  # different bytes, one name
    # two gateways (two hosts) over one bucket
    with _client(tmp_path / "a", url, seaweedfs.options()) as one, \
            _client(tmp_path / "b", url, seaweedfs.options()) as two:
        assert _upload(one, "cat.png", first).json() == {"name": "cat.png", "subfolder": "", "type": "input"}
        assert _upload(two, "cat.png", first).json()["name"] == "cat.png"  # the same bytes reuse the file
        assert _upload(two, "cat.png", other).json()["name"] == "cat (1).png"
        assert _upload(one, "cat.png", other).json()["name"] == "cat (1).png"
        assert _upload(one, "cat.png", b"third").json()["name"] == "cat (2).png"
        assert _upload(one, "cat.png", b"over", overwrite="true").json()["name"] == "cat.png"
        assert _upload(one, "x.png", first, subfolder="../..").status_code == 400
        assert two.get("/view", params={"filename": "cat (1).png", "type": "input"}).content == other
    store = open_files(url, seaweedfs.options())
    assert store.read("input/cat.png") == b"over" and store.read("input/cat (2).png") == b"third"
    assert not (tmp_path / "a" / "input").exists()


def test_load_image_reads_through_the_store(seaweedfs: SeaweedServer, tmp_path: Path) -> None:  # noqa: F811
    from comfymesh.contracts.errors import NodeInputError
    from comfymesh.imaging.nodes import read_input
    from comfymesh.stage.node import NodeContext

    store = open_files(seaweedfs.new_url(), seaweedfs.options())
    store.write("input/sub/photo.png", b"pngbytes")
    store.write("output/made.png", b"made")
    ctx = NodeContext(job_id="j", node_id="1", class_type="LoadImage", home=tmp_path, files=store)
    assert read_input(ctx, "sub/photo.png") == b"pngbytes"
    assert read_input(ctx, "made.png [output]") == b"made"
    with pytest.raises(NodeInputError, match="Invalid image file"):
        read_input(ctx, "missing.png")
    with pytest.raises(NodeInputError, match="leaves its folder"):
        read_input(ctx, "../output/made.png")


def test_v2_assets_live_in_the_shared_store(seaweedfs: SeaweedServer, tmp_path: Path) -> None:  # noqa: F811
    from blake3 import blake3

    url = seaweedfs.new_url()
    data = _png()
    digest = "blake3:" + blake3(data).hexdigest()
    with _client(tmp_path / "a", url, seaweedfs.options()) as one, \
            _client(tmp_path / "b", url, seaweedfs.options()) as two:
        made = one.post("/api/v2/assets", files={"file": ("cat.png", data, "image/png")})
        assert made.status_code == 201, made.text
        again = two.post("/api/v2/assets", files={"file": ("cat.png", data, "image/png")})
        assert again.status_code == 200  # the same bytes, stored once, seen by the other gateway
        assert two.head(f"/api/v2/assets/by-hash/{digest}").status_code == 200
        asset_id = made.json()["id"]
        content = two.get(f"/api/v2/assets/{asset_id}/content")
        assert content.status_code == 200 and content.content == data
        assert two.post("/api/v2/assets/from-hash", json={"hash": digest}).status_code == 201
        assert two.delete(f"/api/v2/assets/{asset_id}").status_code == 204
        assert one.get(f"/api/v2/assets/{asset_id}").status_code == 404
    store = open_files(url, seaweedfs.options())
    blobs = [entry.key for entry in store.entries("input/assets")]
    assert blobs == [f"input/assets/{digest.removeprefix('blake3:')}.png"]
    assert not (tmp_path / "a" / "assets").exists() and not (tmp_path / "b" / "input").exists()
