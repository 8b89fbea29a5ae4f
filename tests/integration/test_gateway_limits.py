"""Limits that hold in the gateway: a chunked body stops at the body limit, images are decoded only within the
pixel limit and without keeping their memory, and what used to be a 500 is a 4xx that leaks no path."""

from __future__ import annotations

import io
import json
import select
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from tests.mesh import Mesh

MiB = 1024 * 1024
BODY_LIMIT = 16 * MiB  # COMFYMESH_MAX_BODY_BYTES's default, which imaging_mesh keeps


def rss_mib(mesh: Mesh, field: str = "VmRSS") -> float:
    pid = mesh.service("gateway").process.pid
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for the gateway")


def reset_peak_rss(mesh: Mesh) -> None:
    Path(f"/proc/{mesh.service('gateway').process.pid}/clear_refs").write_text("5")


def post_chunked(mesh: Mesh, path: str, content_type: str, chunks: Iterator[bytes]) -> tuple[int, bytes, int]:
    """POST a chunked body (no Content-Length) over a raw socket, stopping early if the server answers first:
    (status, body, bytes sent)."""
    sock = socket.create_connection(("127.0.0.1", mesh.port), timeout=60)
    sent = 0
    with sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{mesh.port}\r\nContent-Type: {content_type}\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode())
        try:
            for chunk in chunks:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                if select.select([sock], [], [], 0)[0]:
                    break  # answered before the end of the body
            else:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading: its answer is already on its way
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < _length(answer):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body, sent


def _length(answer: bytes) -> int:
    for line in answer.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def multipart_upload(name: str, total: int) -> Iterator[bytes]:
    """A multipart /upload/image body of `total` bytes of image data, in 1 MiB chunks."""
    yield (b'--b0undary\r\nContent-Disposition: form-data; name="image"; filename="%s"\r\n'
           b"Content-Type: image/png\r\n\r\n" % name.encode())
    for _ in range(total // MiB):
        yield b"\x89" * MiB
    yield b"\r\n--b0undary--\r\n"


def test_a_chunked_upload_stops_at_the_body_limit(imaging_mesh: Mesh) -> None:
    before = rss_mib(imaging_mesh)
    reset_peak_rss(imaging_mesh)
    status, body, sent = post_chunked(imaging_mesh, "/upload/image", "multipart/form-data; boundary=b0undary",
                                      multipart_upload("huge.png", 4 * BODY_LIMIT))
    assert status == 413, body[:300]
    assert "COMFYMESH_MAX_BODY_BYTES" in json.loads(body)["error"]["details"]
    assert sent < 3 * BODY_LIMIT  # it stopped reading; the client learnt it early
    assert not list((imaging_mesh.home / "input").glob("huge*"))
    # the gateway held less than the limit's worth of it (it used to hold the whole body, and more)
    assert rss_mib(imaging_mesh, "VmHWM") - before < BODY_LIMIT / MiB
    status, body, _ = post_chunked(imaging_mesh, "/prompt", "application/json",
                                   iter([b'{"prompt": {"a": "' + b"x" * MiB] * (BODY_LIMIT // MiB + 2)))
    assert status == 413, body[:300]
    assert imaging_mesh.http.get("/healthz").status_code == 200


def test_a_small_chunked_body_still_goes_through(imaging_mesh: Mesh) -> None:
    status, body, _ = post_chunked(imaging_mesh, "/upload/image", "multipart/form-data; boundary=b0undary",
                                   iter([*multipart_upload("small.png", 0)]))
    assert status == 200, body[:300]
    assert json.loads(body)["name"] == "small.png"


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height and holds almost nothing: how a decompression bomb starts."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def bombs(imaging_mesh: Mesh) -> dict[str, bytes]:
    made = {"bomb.png": png_header_only(100_000, 100_000),  # Pillow's own bomb check refuses it
            "over.png": png_header_only(5000, 5000),  # under Pillow's limit, over COMFYMESH_MAX_PIXELS
            "broken.png": b"\x89PNG not really"}
    for name, data in made.items():
        (imaging_mesh.home / "input" / name).write_bytes(data)
    return made


@pytest.mark.parametrize("name", ["bomb.png", "over.png", "broken.png"])
@pytest.mark.parametrize("params", [{"preview": "webp;90"}, {"channel": "a"}, {"preview": "jpeg", "channel": "rgb"}])
def test_previews_of_bombs_and_broken_images_are_a_400(imaging_mesh: Mesh, bombs: dict[str, bytes], name: str,
                                                       params: dict[str, str]) -> None:
    reply = imaging_mesh.http.get("/view", params={"filename": name, "type": "input", **params})
    assert reply.status_code == 400, reply.text
    detail = reply.json()["detail"]
    assert f"input/{name}" in detail and str(imaging_mesh.home) not in detail
    if name != "broken.png":
        assert "COMFYMESH_MAX_PIXELS" in detail
    # the file itself is still served, as bytes
    assert imaging_mesh.http.get("/view", params={"filename": name, "type": "input"}).content == bombs[name]


@pytest.mark.parametrize("name", ["bomb.png", "over.png", "broken.png"])
def test_mask_uploads_of_bombs_are_a_400(imaging_mesh: Mesh, bombs: dict[str, bytes], name: str) -> None:
    good = io.BytesIO()
    Image.new("RGBA", (8, 8)).save(good, format="PNG")
    cases = [(bombs[name], {"filename": "example.png", "type": "input"}),  # the mask is the bomb
             (good.getvalue(), {"filename": name, "type": "input"})]  # the image it masks is
    for mask, original in cases:
        reply = imaging_mesh.http.post("/upload/mask", files={"image": (f"mask_{name}", mask, "image/png")},
                                       data={"original_ref": json.dumps(original)})
        assert reply.status_code == 400, reply.text
        assert str(imaging_mesh.home) not in reply.text
    assert not list((imaging_mesh.home / "input").glob("mask_*"))


@pytest.mark.parametrize("preview", ["webp;101", "jpeg;-1", "webp;abc", "webp;1e3", "jpeg;" + "9" * 20, "webp;٣"])
def test_out_of_range_preview_quality_is_a_400(imaging_mesh: Mesh, preview: str) -> None:
    reply = imaging_mesh.http.get("/view", params={"filename": "example.png", "type": "input", "preview": preview})
    assert reply.status_code == 400 and "0 to 100" in reply.json()["detail"], reply.text


@pytest.mark.parametrize(("preview", "media_type"), [("webp;0", "image/webp"), ("jpeg;100", "image/jpeg"),
                                                      ("webp", "image/webp"), ("png;50", "image/webp")])
def test_valid_preview_qualities_still_work(imaging_mesh: Mesh, preview: str, media_type: str) -> None:
    reply = imaging_mesh.http.get("/view", params={"filename": "example.png", "type": "input", "preview": preview,
                                                   "channel": "rgb"})
    assert reply.status_code == 200 and reply.headers["content-type"] == media_type


def test_a_large_preview_leaves_no_memory_behind(imaging_mesh: Mesh) -> None:
    side = 4096  # COMFYMESH_MAX_PIXELS's default is 4096 x 4096
    Image.linear_gradient("L").resize((side, side)).convert("RGB").save(
        imaging_mesh.home / "input" / "large.png", compress_level=1)
    params = {"filename": "large.png", "type": "input"}
    small = {"filename": "example.png", "type": "input", "channel": "a", "preview": "webp;80"}
    assert imaging_mesh.http.get("/view", params=small).status_code == 200  # codecs loaded
    baseline = rss_mib(imaging_mesh)
    variants = [{"channel": "a"}, {"preview": "webp;80"}, {"preview": "jpeg;80", "channel": "rgb"}] * 2
    with ThreadPoolExecutor(3) as pool:  # at once: each decode in its own worker thread, as under load
        statuses = list(pool.map(lambda v: imaging_mesh.http.get("/view", params={**params, **v}).status_code,
                                 variants))
    assert statuses == [200] * len(variants)
    grown = [rss_mib(imaging_mesh) - baseline]
    deadline = time.monotonic() + 5
    while grown[-1] > 32 and time.monotonic() < deadline:  # the answer's buffers go with the request
        time.sleep(0.1)
        grown.append(rss_mib(imaging_mesh) - baseline)
    # one decode of this image takes 64 MiB per copy; a gateway that kept them grew by hundreds of MiB
    assert grown[-1] < 32, grown


def test_userdata_written_over_a_folder_is_a_409(imaging_mesh: Mesh) -> None:
    http = imaging_mesh.http
    assert http.post("/api/userdata/folder%2Fa.json", content=b"{}").status_code == 200
    for path in ("/api/userdata/folder", "/api/userdata/folder%2Fa.json%2Fb.json",
                 "/api/userdata/folder%2Fa.json/move/folder"):
        reply = http.post(path, content=b"{}")
        assert reply.status_code == 409 and str(imaging_mesh.home) not in reply.text, (path, reply.text)
