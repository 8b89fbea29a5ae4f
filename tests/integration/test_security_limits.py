"""Per-node limits hold for what nodes make at run time, and the imaging stage reads only files inside
its folders (issue 12, findings 6 and 11), on a real mesh with small limits."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.mesh import Mesh

MAX_PIXELS, MAX_BATCH = 1_000_000, 8
MiB = 2**20


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    # one job at a time and a node that hangs until cancelled: a job can wait, validated, in the queue
    mesh = Mesh(tmp_path_factory.mktemp("home"), env={
        "COMFYMESH_MAX_PIXELS": str(MAX_PIXELS), "COMFYMESH_MAX_BATCH": str(MAX_BATCH),
        "COMFYMESH_MAX_RUNNING_JOBS": "1", "COMFYMESH_TEST_HANG_NODES": "ImageSharpen"})
    try:
        yield mesh.start()
    finally:
        mesh.stop()


def _peak_memory(mesh: Mesh) -> int:
    """The imaging process's peak resident memory so far (VmHWM), in bytes."""
    status = Path(f"/proc/{mesh.service('imaging0').process.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024


def _saved(mesh: Mesh) -> list[str]:
    return sorted(os.listdir(mesh.home / "output")) + sorted(os.listdir(mesh.home / "temp"))


def _save(prompt: dict[str, Any], last: str) -> dict[str, Any]:
    return {**prompt, "99": {"class_type": "SaveImage", "inputs": {"images": [last, 0], "filename_prefix": "limit"}}}


def _fails_on_limit(mesh: Mesh, prompt: dict[str, Any], node_id: str, class_type: str, limit: str) -> None:
    """The job fails at `node_id` with an error naming the node and the limit; nothing is saved, and the
    imaging process never grows by what the refused work would have needed."""
    before, peak = _saved(mesh), _peak_memory(mesh)
    job = mesh.wait(mesh.submit(prompt))
    assert job["status"] == "failed", job
    error = job["error"]
    assert error["node_id"] == node_id and error["type"] == "invalid_input", error
    assert class_type in error["message"] and limit in error["message"], error
    assert "bigger than max of" in error["message"]
    states = {node["node_id"]: node["state"] for node in job["nodes"]}
    assert states["99"] != "done", states
    assert _saved(mesh) == before
    assert _peak_memory(mesh) - peak < 64 * MiB


def test_a_many_frame_gif_is_refused_before_it_is_decoded(mesh: Mesh) -> None:
    frames = [Image.new("RGB", (128, 128), (i, 0, 0)) for i in range(100)]
    frames[0].save(mesh.home / "input" / "frames.gif", save_all=True, append_images=frames[1:])
    prompt = _save({"1": {"class_type": "LoadImage", "inputs": {"image": "frames.gif"}}}, "1")
    _fails_on_limit(mesh, prompt, "1", "LoadImage", "COMFYMESH_MAX_BATCH")


def test_a_huge_png_is_refused_before_it_is_decoded(mesh: Mesh) -> None:
    # 81 Mpx of one colour: 10 KB on disk, over 600 MB in ImageMagick and 1.3 GB as float pixels
    Image.new("1", (9000, 9000)).save(mesh.home / "input" / "huge.png")
    prompt = _save({"1": {"class_type": "LoadImage", "inputs": {"image": "huge.png"}}}, "1")
    _fails_on_limit(mesh, prompt, "1", "LoadImage", "COMFYMESH_MAX_PIXELS")


def test_a_scale_factor_is_refused_before_it_resizes(mesh: Mesh) -> None:
    prompt = _save({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 512, "height": 512, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ImageScaleBy", "inputs": {"image": ["1", 0], "upscale_method": "bicubic",
                                                        "scale_by": 4.0}}}, "2")
    _fails_on_limit(mesh, prompt, "2", "ImageScaleBy", "COMFYMESH_MAX_PIXELS")


def test_chained_batches_are_refused_before_they_grow_past_the_limit(mesh: Mesh) -> None:
    prompt: dict[str, Any] = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}}}
    for node in range(2, 6):  # batches of 2, 4, 8, then 16
        previous = [str(node - 1), 0]
        prompt[str(node)] = {"class_type": "ImageBatch", "inputs": {"image1": previous, "image2": previous}}
    _fails_on_limit(mesh, _save(prompt, "5"), "5", "ImageBatch", "COMFYMESH_MAX_BATCH")


def test_a_damaged_image_fails_with_a_clear_message(mesh: Mesh) -> None:
    data = io.BytesIO()
    frames = [Image.new("RGB", (30, 30), (i * 40, 0, 0)) for i in range(4)]
    frames[0].save(data, "GIF", save_all=True, append_images=frames[1:])
    (mesh.home / "input" / "cut.gif").write_bytes(data.getvalue()[:300])
    job = mesh.wait(mesh.submit(_save({"1": {"class_type": "LoadImage", "inputs": {"image": "cut.gif"}}}, "1")))
    assert job["status"] == "failed" and job["error"]["node_id"] == "1", job
    message = job["error"]["message"]
    assert "damaged or truncated" in message and "cut.gif" in message, message
    assert "Wand" not in message and "@ error/" not in message and "buffer.gif" not in message, message


def _wait_running(mesh: Mesh, job_id: str) -> None:
    deadline = time.monotonic() + 30
    while mesh.http.get(f"/v1/jobs/{job_id}").json()["status"] != "running":
        assert time.monotonic() < deadline, f"job {job_id} never started"
        time.sleep(0.05)


def test_a_symlink_swapped_in_after_validation_is_not_followed(
        mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> None:
    outside = tmp_path_factory.mktemp("outside") / "secret.png"
    Image.new("RGB", (7, 5), "white").save(outside)
    Image.new("RGB", (4, 4), "black").save(mesh.home / "input" / "swapped.png")
    # the only running slot is held by a job that hangs until cancelled
    blocker = mesh.submit({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ImageSharpen", "inputs": {"image": ["1", 0], "sharpen_radius": 1, "sigma": 1.0,
                                                        "alpha": 1.0}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}})
    _wait_running(mesh, blocker)
    # validated against the real file, then queued behind the blocker
    job_id = mesh.submit(_save({"1": {"class_type": "LoadImage", "inputs": {"image": "swapped.png"}}}, "1"))
    assert mesh.http.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
    link = mesh.home / "input" / ".swap"
    link.symlink_to(outside)
    link.replace(mesh.home / "input" / "swapped.png")
    assert mesh.http.post(f"/v1/jobs/{blocker}/cancel").status_code == 200

    job = mesh.wait(job_id)
    assert job["status"] == "failed", job  # it completed with the outside file's pixels before the fix
    error = job["error"]
    assert error["node_id"] == "1" and "symbolic link" in error["message"], error
    # the message names the file relative to the data root, never where the data root or the target are
    assert "input/swapped.png" in error["message"], error
    assert str(mesh.home) not in str(error) and str(outside.parent) not in str(error), error
