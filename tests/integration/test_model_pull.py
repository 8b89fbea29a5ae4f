"""Model pulls against a local HTTP server: `comfymesh models pull` (POST /v1/models/pull) writes the file into
the model folder with its SHA-256 checked, resumes a cut download with Range, and refuses, before any connection,
hosts off the allowed list, loopback addresses the outbound policy does not allow, and redirects to them.

The mesh allows exactly 127.0.0.1 (COMFYMESH_OUTBOUND_ALLOW and COMFYMESH_MODEL_PULL_HOSTS); a second server on
127.0.0.2 plays the internal service an attacker would aim at, and counts every request it gets."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.mesh import Mesh

MODEL = os.urandom(300_000)
HUGE = 2_000_000  # over the mesh's COMFYMESH_MODEL_PULL_MAX_BYTES


class Server:
    """Serves /model.safetensors (Range honoured), /huge.safetensors, /redirect (to `redirect_to`); logs requests."""

    def __init__(self, host: str) -> None:
        self.requests: list[tuple[str, str]] = []
        self.redirect_to = ""
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                owner.requests.append((self.path, self.headers.get("range", "")))
                if self.path == "/redirect.safetensors":
                    self.send_response(302)
                    self.send_header("location", owner.redirect_to)
                    self.end_headers()
                    return
                body = MODEL if self.path == "/model.safetensors" else b"\0" * HUGE
                start = int(self.headers["range"].split("=")[1].rstrip("-")) if self.headers.get("range") else 0
                self.send_response(206 if start else 200)
                self.send_header("content-length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:])

        self.http = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Server, Server]]:
    allowed, internal = Server("127.0.0.1"), Server("127.0.0.2")
    yield allowed, internal
    allowed.http.shutdown()
    internal.http.shutdown()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("pull-home"),
                env={"COMFYMESH_OUTBOUND_ALLOW": "127.0.0.1/32", "COMFYMESH_MODEL_PULL_HOSTS": "127.0.0.1,127.0.0.2",
                     "COMFYMESH_MODEL_PULL_MAX_BYTES": "1000000"})
    try:
        yield mesh.start()
    finally:
        mesh.stop()


def cli(mesh: Mesh, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "comfymesh.cli.main", "models", *args, "--url", mesh.url],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})


def test_pull_checks_the_hash_and_lists_the_file(mesh: Mesh, servers: tuple[Server, Server]) -> None:
    allowed, _ = servers
    digest = hashlib.sha256(MODEL).hexdigest()
    result = cli(mesh, "pull", f"{allowed.url}/model.safetensors", "--sha256", digest, "--name", "tiny.safetensors")
    assert result.returncode == 0, result.stderr
    saved = mesh.home / "models" / "checkpoints" / "tiny.safetensors"
    assert saved.read_bytes() == MODEL and "saved checkpoints/tiny.safetensors" in result.stderr
    listed = cli(mesh, "list", "checkpoints")
    assert "tiny.safetensors" in listed.stdout

    wrong = cli(mesh, "pull", f"{allowed.url}/model.safetensors", "--sha256", "0" * 64, "--folder", "loras")
    assert wrong.returncode == 1 and "sha256 mismatch" in wrong.stderr
    assert not list((mesh.home / "models" / "loras").glob("model.safetensors*"))


def test_a_cut_download_resumes_with_range(mesh: Mesh, servers: tuple[Server, Server]) -> None:
    allowed, _ = servers
    folder = mesh.home / "models" / "vae"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors.part").write_bytes(MODEL[:100_000])
    allowed.requests.clear()
    result = cli(mesh, "pull", f"{allowed.url}/model.safetensors", "--folder", "vae",
                 "--sha256", hashlib.sha256(MODEL).hexdigest())
    assert result.returncode == 0, result.stderr
    assert allowed.requests == [("/model.safetensors", "bytes=100000-")]
    assert (folder / "model.safetensors").read_bytes() == MODEL and not (folder / "model.safetensors.part").exists()


def test_refusals_come_before_any_connection(mesh: Mesh, servers: tuple[Server, Server]) -> None:
    allowed, internal = servers
    internal.requests.clear()
    loopback = cli(mesh, "pull", f"{internal.url}/model.safetensors")
    assert loopback.returncode == 1 and "loopback" in loopback.stderr and "COMFYMESH_OUTBOUND_ALLOW" in loopback.stderr
    metadata = cli(mesh, "pull", "http://169.254.169.254/latest.safetensors")
    assert metadata.returncode == 1 and "link-local" in metadata.stderr
    other = cli(mesh, "pull", "https://example.com/model.safetensors")
    assert other.returncode == 1 and "not a host models may be pulled from" in other.stderr
    pickle = cli(mesh, "pull", f"{allowed.url}/model.ckpt")
    assert pickle.returncode == 1 and ".safetensors" in pickle.stderr

    allowed.redirect_to = f"{internal.url}/model.safetensors"
    redirected = cli(mesh, "pull", f"{allowed.url}/redirect.safetensors")
    assert redirected.returncode == 1 and "loopback" in redirected.stderr
    assert internal.requests == []  # neither the direct URL nor the redirect reached the internal server

    huge = cli(mesh, "pull", f"{allowed.url}/huge.safetensors")
    assert huge.returncode == 1 and "over the limit of 1000000" in huge.stderr
    assert not any(Path(mesh.home / "models" / "checkpoints").glob("huge*"))


def test_an_unknown_pull_is_a_problem(mesh: Mesh) -> None:
    reply = mesh.http.get("/v1/models/pulls/nope")
    assert reply.status_code == 404 and reply.json()["code"] == "not_found"
    bad_folder = mesh.http.post("/v1/models/pull", json={"url": "https://huggingface.co/a.safetensors",
                                                          "folder": "../etc"})
    assert bad_folder.status_code == 400 and "not a model folder" in bad_folder.json()["detail"]
