"""The mesh with its model folders in S3 (COMFYMESH_MODELS_URL=s3://, a real SeaweedFS): a tiny SD1.5 checkpoint
only in the bucket is listed by /object_info and /v1/checkpoints, loaded through the diffusion stage from the
host's copy under <home>/cache/models/<sha256>/, and a tampered copy is dropped and fetched again; a missing
bucket keeps the stages NOT_SERVING (so /readyz is 503), its S3 error code logged."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfymesh.files import open_files
from tests.integration.test_diffusion_mesh import small, tiny_checkpoint
from tests.mesh import Mesh
from tests.seaweedfs import SeaweedServer, seaweedfs  # noqa: F401 (fixture)

NAME = "bucket_sd15.safetensors"


@pytest.fixture(scope="module")
def s3_models(seaweedfs: SeaweedServer, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
              ) -> Iterator[tuple[Mesh, str]]:
    made = tmp_path_factory.mktemp("made") / NAME
    tiny_checkpoint("sd15", made)
    url = seaweedfs.new_url()
    open_files(url, seaweedfs.options()).write(f"checkpoints/{NAME}", made.read_bytes())
    mesh = Mesh(tmp_path_factory.mktemp("home"), stages=("imaging", "diffusion"),
                env={"COMFYMESH_MODELS_URL": url, "COMFYMESH_MODELS_STORAGE_OPTIONS": json.dumps(seaweedfs.options())})
    try:
        yield mesh.start(), hashlib.sha256(made.read_bytes()).hexdigest()
    finally:
        mesh.stop()


def _txt2img(mesh: Mesh) -> dict[str, object]:
    prompt = small("txt2img_sd15")
    prompt["4"]["inputs"]["ckpt_name"] = NAME
    return mesh.wait(mesh.submit(prompt), timeout=300)


def test_a_bucket_checkpoint_is_listed_loaded_and_refetched_when_tampered(s3_models: tuple[Mesh, str]) -> None:
    mesh, digest = s3_models
    choices = mesh.http.get("/object_info/CheckpointLoaderSimple").json()["CheckpointLoaderSimple"]
    assert choices["input"]["required"]["ckpt_name"][0] == [NAME]
    listed = mesh.http.get("/v1/checkpoints").json()["checkpoints"]
    assert [(c["name"], c["digest"]) for c in listed] == [(NAME, digest)]
    assert not (mesh.home / "models" / "checkpoints" / NAME).exists()

    job = _txt2img(mesh)
    assert job["status"] == "completed", job["error"]
    copy = mesh.home / "cache" / "models" / digest / NAME
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == digest

    copy.write_bytes(copy.read_bytes()[:-4] + b"XXXX")  # tampered on the host
    mesh.forget_cache()
    job = _txt2img(mesh)
    assert job["status"] == "completed", job["error"]
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == digest  # dropped and fetched again


def test_a_missing_models_bucket_keeps_the_stage_not_serving(seaweedfs: SeaweedServer,  # noqa: F811
                                                               tmp_path: Path) -> None:
    mesh = Mesh(tmp_path / "home", stages=("imaging",),
                env={"COMFYMESH_MODELS_URL": "s3://no-such-models-bucket/models",
                     "COMFYMESH_MODELS_STORAGE_OPTIONS": json.dumps(seaweedfs.options())})
    try:
        mesh.supervisor.start_all(timeout=120)
        mesh.wait_not_ready(["imaging"])
        assert any("NoSuchBucket" in line for line in mesh.logs if line.startswith("imaging"))
    finally:
        mesh.stop()
