"""The whole mesh over an s3:// files store (SeaweedFS): an upload, LoadImage, SaveImage and /view go through
the bucket and nothing through the data home; a stage whose S3 secret is wrong answers NOT_SERVING and logs
the S3 error code, so /readyz is 503."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from comfymesh.files import open_files
from tests.mesh import Mesh
from tests.seaweedfs import SeaweedServer, seaweedfs  # noqa: F401 (fixture)


def _env(url: str, options: dict[str, Any]) -> dict[str, str]:
    return {"COMFYMESH_FILES_URL": url, "COMFYMESH_FILES_STORAGE_OPTIONS": json.dumps(options)}


@pytest.fixture
def s3_mesh(seaweedfs: SeaweedServer, tmp_path: Path) -> Iterator[tuple[Mesh, str]]:  # noqa: F811
    url = seaweedfs.new_url()
    mesh = Mesh(tmp_path / "home", stages=("imaging",), env=_env(url, seaweedfs.options()))
    try:
        yield mesh.start(), url
    finally:
        mesh.stop()


def _png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _finished(mesh: Mesh, prompt_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = mesh.http.get(f"/history/{prompt_id}").json()
        if entry:
            return dict(entry[prompt_id])
        time.sleep(0.05)  # the poll's interval: the loop ends on the job's history entry
    raise TimeoutError(prompt_id)


def test_upload_load_save_and_view_through_the_bucket(s3_mesh: tuple[Mesh, str],
                                                      seaweedfs: SeaweedServer) -> None:  # noqa: F811
    mesh, url = s3_mesh
    name = mesh.http.post("/upload/image", files={"image": ("red.png", _png((250, 0, 0)), "image/png")}).json()["name"]
    assert "red.png" in mesh.http.get("/object_info/LoadImage").json()["LoadImage"]["input"]["required"]["image"][0]
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": name}},
              "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
              "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "s3/inv", "images": ["2", 0]}}}
    prompt_id = mesh.http.post("/prompt", json={"prompt": prompt}).json()["prompt_id"]
    entry = _finished(mesh, prompt_id)
    assert entry["status"]["status_str"] == "success", entry["status"]
    image = entry["outputs"]["3"]["images"][0]
    assert image == {"filename": "inv_00001_.png", "subfolder": "s3", "type": "output"}
    viewed = mesh.http.get("/view", params=image)
    assert viewed.status_code == 200
    assert Image.open(io.BytesIO(viewed.content)).convert("RGB").getpixel((0, 0)) == (5, 255, 255)
    store = open_files(url, seaweedfs.options())
    assert store.read("output/s3/inv_00001_.png") == viewed.content
    assert not any((mesh.home / "output").rglob("*.png")) and not any((mesh.home / "input").iterdir())
    assert mesh.http.post("/prompt", json={"prompt": {**prompt, "1": {"class_type": "LoadImage",
                                                                         "inputs": {"image": "nope.png"}}}}
                          ).status_code == 400


def test_a_wrong_secret_keeps_the_stage_not_serving(seaweedfs: SeaweedServer, tmp_path: Path) -> None:  # noqa: F811
    mesh = Mesh(tmp_path / "home", stages=("imaging",),
                env=_env(seaweedfs.new_url(), seaweedfs.options(secret="wrong-secret-0123456789")))
    try:
        mesh.supervisor.start_all(timeout=120)
        mesh.wait_not_ready(["imaging"])
        assert any("SignatureDoesNotMatch" in line for line in mesh.logs if line.startswith("imaging"))
    finally:
        mesh.stop()


def test_a_saved_workflow_runs_through_the_bucket(s3_mesh: tuple[Mesh, str],
                                                  seaweedfs: SeaweedServer) -> None:  # noqa: F811
    import base64

    mesh, url = s3_mesh
    mesh.http.post("/upload/image", files={"image": ("start.png", _png((0, 0, 0)), "image/png")})
    workflow = {"1": {"class_type": "LoadImage", "inputs": {"image": "start.png"}},
                "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
                "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "wf"}}}
    saved = mesh.http.put("/v1/workflows/invert", json={"workflow": workflow, "inputs": [
        {"name": "image", "node_id": "1", "input": "image"}]})
    assert saved.status_code in (200, 201), saved.text
    reply = mesh.http.post("/v1/workflows/invert/run", json={
        "inputs": {"image": {"base64": base64.b64encode(_png((10, 20, 30))).decode()}}, "wait_s": 60,
        "images_as": "base64", "output": {"format": "jpeg", "quality": 95}})
    assert reply.status_code == 200, reply.text
    jpeg = Image.open(io.BytesIO(base64.b64decode(reply.json()["images"][0]["base64"])))
    pixel = np.asarray(jpeg.convert("RGB"), dtype=np.int16)[4, 4]
    assert jpeg.format == "JPEG" and np.abs(pixel - (245, 235, 225)).max() <= 3
    store = open_files(url, seaweedfs.options())
    assert [e.key for e in store.entries("input/workflow_inputs")] and store.exists("output/wf_00001_.png")
