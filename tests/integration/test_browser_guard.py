"""No cross-site requests, no DNS rebinding, no script from stored files: what a web page can make the gateway
do, against a real mesh in its default configuration (no token, loopback)."""

from __future__ import annotations

import base64
import io
import json
import os
import re

import httpx
import pytest
from fastapi.routing import APIWebSocketRoute, iter_route_contexts
from fastapi.testclient import TestClient
from PIL import Image
from starlette.routing import Mount
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Origin

from comfymesh.config import Settings
from comfymesh.gateway.app import create_app
from tests.mesh import Mesh

FOREIGN = "http://evil.example"
SVG = (b'<svg xmlns="http://www.w3.org/2000/svg"><script>fetch("/queue",{method:"POST",'
       b'body:JSON.stringify({clear:true})})</script></svg>')
PROMPT = {"1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "guard"}}}


def png(size: tuple[int, int] = (4, 4)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (9, 9, 9)).save(buffer, format="PNG")
    return buffer.getvalue()


def routes(state_changing: bool) -> list[tuple[str, str]]:
    """(method, concrete path) of the gateway's routes, path parameters filled with dummies."""
    found: list[tuple[str, str]] = []
    for context in iter_route_contexts(create_app(Settings()).routes):
        if isinstance(context.original_route, Mount | APIWebSocketRoute):
            continue
        path = re.sub(r"\{[^}]+\}", "dummy", context.path or "")
        found += [(m, path) for m in sorted(context.methods or []) if (m not in ("GET", "HEAD")) == state_changing]
    return found


def status_of(client: httpx.Client, method: str, path: str, **kwargs: object) -> int:
    """The status only: never read the body, since SSE routes stream forever."""
    with client.stream(method, path, **kwargs) as response:  # type: ignore[arg-type]
        return response.status_code


def upgrade_status(mesh: Mesh, path: str, headers: dict[str, str]) -> int:
    """The answer to a websocket upgrade with these headers (Host included, which websockets won't forge)."""
    handshake = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                 "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}
    return status_of(mesh.http, "GET", path, headers={**handshake, **headers})


def test_a_foreign_origin_is_refused_on_every_state_changing_route(imaging_mesh: Mesh) -> None:
    changing = routes(state_changing=True)
    assert {("POST", "/prompt"), ("POST", "/api/prompt"), ("POST", "/v1/workflows"), ("POST", "/upload/image"),
            ("POST", "/interrupt"), ("POST", "/queue"), ("POST", "/history"), ("POST", "/userdata/dummy"),
            ("POST", "/settings"), ("DELETE", "/userdata/dummy")} <= set(changing)
    for origin in (FOREIGN, "null", f"http://127.0.0.1:{imaging_mesh.port + 1}", "http://localhost"):
        refused = {(m, p): status_of(imaging_mesh.http, m, p, json={}, headers={"Origin": origin})
                   for m, p in changing}
        assert {k: s for k, s in refused.items() if s != 403} == {}, origin
    # what a cross-site HTML form sends: multipart, urlencoded, text/plain; with the Referer alone, too
    upload = imaging_mesh.http.post("/upload/image", files={"image": ("x.png", png(), "image/png")},
                                    headers={"Origin": FOREIGN})
    assert upload.status_code == 403 and "COMFYMESH_ALLOWED_ORIGINS" in upload.json()["detail"]
    assert not (imaging_mesh.home / "input" / "x.png").exists()
    for headers in ({"Origin": FOREIGN, "Content-Type": "text/plain"},
                    {"Referer": f"{FOREIGN}/page", "Content-Type": "application/x-www-form-urlencoded"}):
        reply = imaging_mesh.http.post("/prompt", content=json.dumps({"prompt": PROMPT}), headers=headers)
        assert reply.status_code == 403, headers
    assert imaging_mesh.http.get("/queue").json()["queue_pending"] == []


def test_a_foreign_host_is_refused_on_every_route(imaging_mesh: Mesh) -> None:
    every = routes(state_changing=True) + routes(state_changing=False)
    for host in ("evil.example", f"evil.example:{imaging_mesh.port}", "127.0.0.1.evil.example", "localhost@evil"):
        refused = {(m, p): status_of(imaging_mesh.http, m, p, headers={"Host": host}) for m, p in every}
        assert {k: s for k, s in refused.items() if s != 403} == {}, host
    reply = imaging_mesh.http.post("/prompt", json={"prompt": PROMPT}, headers={"Host": "evil.example"})
    assert "COMFYMESH_ALLOWED_HOSTS" in reply.json()["detail"]


def test_websocket_refuses_a_foreign_origin_or_host(imaging_mesh: Mesh) -> None:
    ws_url = imaging_mesh.url.replace("http", "ws", 1)
    for path in ("/ws", "/api/ws"):
        with pytest.raises(InvalidStatus) as refused:
            connect(f"{ws_url}{path}?clientId=x", origin=Origin(FOREIGN)).close()
        assert refused.value.response.status_code == 403
        assert upgrade_status(imaging_mesh, path, {"Host": "evil.example"}) == 403
        assert upgrade_status(imaging_mesh, path, {"Origin": FOREIGN}) == 403
        with connect(f"{ws_url}{path}?clientId=same", origin=Origin(imaging_mesh.url)) as socket:
            assert json.loads(socket.recv(timeout=10))["type"] == "status"


def test_our_own_pages_and_plain_clients_still_work(imaging_mesh: Mesh) -> None:
    http = imaging_mesh.http
    for host in (f"127.0.0.1:{imaging_mesh.port}", f"localhost:{imaging_mesh.port}", "[::1]", "localhost"):
        assert http.get("/queue", headers={"Host": host}).status_code == 200, host
    own = {"Origin": imaging_mesh.url}
    queued = http.post("/api/prompt", json={"prompt": PROMPT}, headers=own)
    assert queued.status_code == 200, queued.text
    assert http.post("/upload/image", files={"image": ("own.png", png(), "image/png")}, headers=own).status_code == 200
    assert http.post("/api/settings", json={"Comfy.X": 1}, headers={**own, "Referer": f"{imaging_mesh.url}/"}
                     ).status_code == 200
    # a link from another site is a navigation (GET), not a request that changes anything
    assert http.get("/", headers={"Referer": f"{FOREIGN}/"}).status_code == 200
    # ComfyUI's scripts post with urllib's default form type and no Origin
    scripted = http.post("/prompt", content=json.dumps({"prompt": PROMPT}),
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert scripted.status_code == 200, scripted.text


@pytest.mark.parametrize("route", ["/prompt", "/api/prompt", "/v1/workflows", "/queue"])
def test_a_json_body_sent_as_text_plain_is_refused(imaging_mesh: Mesh, route: str) -> None:
    # the content type a cross-site form can send without a CORS preflight, even where no Origin comes along
    reply = imaging_mesh.http.post(route, content=json.dumps({"prompt": PROMPT, "clear": True}),
                                   headers={"Content-Type": "text/plain;charset=UTF-8"})
    assert reply.status_code == 415, reply.text
    body = reply.json()  # /v1 answers a problem, ComfyUI's routes ComfyUI's body
    assert "application/json" in (body["detail"] if route.startswith("/v1/") else body["error"]["details"])


def test_the_allow_lists_open_a_reverse_proxy() -> None:
    app = create_app(Settings(allowed_hosts="comfy.example.com", allowed_origins="https://proxy.example:8443"))
    with TestClient(app, base_url="http://comfy.example.com") as client:
        assert client.get("/healthz").status_code == 200
        # the proxy forwards to us under another Host, and its pages' Origin is its own
        assert client.get("/healthz", headers={"Host": "127.0.0.1:8080",
                                               "Origin": "https://proxy.example:8443"}).status_code == 200
        assert client.get("/healthz", headers={"Host": "proxy.example"}).status_code == 200
        for refused in ({"Origin": "https://proxy.example"}, {"Origin": FOREIGN}, {"Host": "other.example"}):
            assert client.get("/healthz", headers=refused).status_code == 403, refused
        assert client.get("/healthz", headers={"Origin": "http://comfy.example.com"}).status_code == 200
    with TestClient(create_app(Settings(allowed_hosts="*")), base_url="http://anything.example") as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/healthz", headers={"Origin": FOREIGN}).status_code == 403


def test_every_answer_says_nosniff_and_refuses_foreign_frames(imaging_mesh: Mesh) -> None:
    for path in ("/", "/healthz", "/queue", "/v1/jobs", "/no-such-asset.js", "/view?filename=none.png"):
        reply = imaging_mesh.http.get(path)
        assert reply.headers["x-content-type-options"] == "nosniff", path
        assert "frame-ancestors" in reply.headers["content-security-policy"], path
    refused = imaging_mesh.http.get("/queue", headers={"Origin": FOREIGN})
    assert refused.headers["x-content-type-options"] == "nosniff"


def assert_inert(reply: httpx.Response) -> None:
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].partition(";")[0] in ("application/octet-stream", "application/json",
                                                               "text/css")
    assert reply.headers["content-disposition"].startswith("attachment;")
    assert reply.headers["x-content-type-options"] == "nosniff"
    policy = reply.headers["content-security-policy"]
    assert "sandbox" in policy and "default-src 'none'" in policy and "script-src" not in policy


@pytest.mark.parametrize("name", ["evil.svg", "evil.xml", "evil.html", "evil.xhtml", "evil.js"])
def test_an_uploaded_script_is_served_inert(imaging_mesh: Mesh, name: str) -> None:
    http = imaging_mesh.http
    stored = http.post("/upload/image", files={"image": (name, SVG, "image/svg+xml")})
    assert stored.status_code == 200, stored.text
    for route in ("/view", "/api/view"):
        reply = http.get(route, params={"filename": stored.json()["name"], "type": "input"})
        assert_inert(reply)
        assert reply.content == SVG


@pytest.mark.parametrize("name", ["x.html", "x.svg", "workflows%2Fx.htm", "user.css", "x.json"])
def test_userdata_files_are_served_inert(imaging_mesh: Mesh, name: str) -> None:
    http = imaging_mesh.http
    assert http.post(f"/api/userdata/{name}", content=b"<script>alert(1)</script>").status_code == 200
    assert_inert(http.get(f"/api/userdata/{name}"))


def test_images_stay_inline_and_any_file_name_is_served(imaging_mesh: Mesh) -> None:
    http = imaging_mesh.http
    for name in ("plain.png", "café ☕ 画像.png"):
        stored = http.post("/upload/image", files={"image": (name, png(), "image/png")}).json()
        reply = http.get("/view", params={"filename": stored["name"], "type": "input"})
        assert reply.status_code == 200 and reply.headers["content-type"] == "image/png", name
        disposition = reply.headers["content-disposition"]
        assert disposition.startswith("inline;"), disposition
        if not name.isascii():  # a name beyond Latin-1 was a 500
            assert "filename*=UTF-8''caf%C3%A9%20%E2%98%95" in disposition
        assert "sandbox" in reply.headers["content-security-policy"]
