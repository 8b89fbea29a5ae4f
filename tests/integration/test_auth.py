"""Authentication everywhere: every gateway route, /ws, SSE, JWTs, the login cookie and gRPC between services."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import jwt
import pytest
from fastapi.routing import APIWebSocketRoute, iter_route_contexts
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.routing import Mount
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from comfymesh.config import Settings
from comfymesh.gateway.app import create_app
from comfymesh.rpc.auth import METADATA_KEY
from comfymesh.v1 import orchestrator_pb2, orchestrator_pb2_grpc, stage_pb2, stage_pb2_grpc
from tests.mesh import SHARED, Mesh, free_port

TOKEN = "test-api-token-5f0c9b7e2a"
JWT_SECRET = "test-jwt-hs256-secret-0123456789abcdef"
INTERNAL = "test-internal-secret-c0ffee"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
OPEN = {"/healthz", "/readyz", "/login", "/logout"}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("home")
    mesh = Mesh(home, stages=("imaging",), env={
        "COMFYMESH_API_TOKEN": TOKEN, "COMFYMESH_JWT_KEYS": JWT_SECRET, "COMFYMESH_JWT_ALLOWED_USERS": "alice",
        "COMFYMESH_INTERNAL_SECRET": INTERNAL})
    shutil.copy(SHARED / "data" / "astronaut.png", home / "input" / "example.png")
    mesh.http.headers.update(BEARER)
    try:
        yield mesh.start()
    finally:
        mesh.stop()


def every_http_route() -> list[tuple[str, str]]:
    """(method, concrete path) of every route the gateway serves, path parameters filled with dummies."""
    app = create_app(Settings())
    routes: list[tuple[str, str]] = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, Mount):
            routes.append(("GET", "/no-such-asset.js"))  # the frontend's static files
        elif not isinstance(route, APIWebSocketRoute) and context.path not in OPEN:
            path = re.sub(r"\{[^}]+\}", "dummy", context.path or "")
            routes += [(method, path) for method in sorted(context.methods or [])]
    return routes


def websocket_paths() -> list[str]:
    return [str(c.path) for c in iter_route_contexts(create_app(Settings()).routes)
            if isinstance(c.original_route, APIWebSocketRoute)]


def status_of(client: httpx.Client, method: str, path: str, **kwargs: object) -> int:
    """The status only: never read the body, since SSE routes stream forever."""
    body: dict[str, object] = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
    with client.stream(method, path, **body, **kwargs) as response:  # type: ignore[arg-type]
        return response.status_code


def test_every_route_needs_credentials(mesh: Mesh) -> None:
    routes = every_http_route()
    assert len(routes) > 60 and ("GET", "/v1/events") in routes and ("POST", "/api/prompt") in routes
    with httpx.Client(base_url=mesh.url, timeout=30) as anonymous:
        refused = {(m, p): status_of(anonymous, m, p) for m, p in routes}
        assert {k: s for k, s in refused.items() if s != 401} == {}
        reply = anonymous.get("/v1/jobs")
        assert reply.headers["www-authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in reply.json()["detail"] and "/login" in reply.json()["detail"]
        for path in OPEN - {"/logout"}:
            assert anonymous.get(path).status_code == 200, path
    allowed = {(m, p): status_of(mesh.http, m, p) for m, p in routes}
    assert {k: s for k, s in allowed.items() if s in (401, 403)} == {}


def test_browser_without_session_is_sent_to_login(mesh: Mesh) -> None:
    reply = httpx.get(f"{mesh.url}/", headers={"Accept": "text/html"}, follow_redirects=False)
    assert reply.status_code == 303 and reply.headers["location"] == "/login?next=%2F"
    page = httpx.get(f"{mesh.url}/login")
    assert page.status_code == 200 and '<form method="post" action="/login">' in page.text


def _login(mesh: Mesh) -> str:
    wrong = httpx.post(f"{mesh.url}/login", data={"token": "nope", "next": "/"})
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    reply = httpx.post(f"{mesh.url}/login", data={"token": TOKEN, "next": "/queue"}, follow_redirects=False)
    assert reply.status_code == 303 and reply.headers["location"] == "/queue"
    cookie = reply.headers["set-cookie"]
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and "Max-Age=" in cookie
    assert TOKEN not in cookie  # a signed session, never the raw token
    return cookie.split(";", 1)[0]


def test_login_cookie_opens_http_and_websocket(mesh: Mesh) -> None:
    cookie = _login(mesh)
    assert httpx.get(f"{mesh.url}/queue", headers={"Cookie": cookie}).status_code == 200
    forged = cookie[:-4] + ("AAAA" if not cookie.endswith("AAAA") else "BBBB")
    assert httpx.get(f"{mesh.url}/queue", headers={"Cookie": forged}).status_code == 401
    ws_url = mesh.url.replace("http", "ws", 1)
    with connect(f"{ws_url}/ws?clientId=cookie", additional_headers={"Cookie": cookie}) as socket:
        assert json.loads(socket.recv(timeout=10))["type"] == "status"


def test_websocket_needs_credentials(mesh: Mesh) -> None:
    ws_url = mesh.url.replace("http", "ws", 1)
    paths = websocket_paths()
    assert set(paths) >= {"/ws", "/api/ws"}
    for path in paths:
        for query in ("", "?token=wrong"):
            with pytest.raises(InvalidStatus) as refused:
                connect(f"{ws_url}{path}{query}").close()
            assert refused.value.response.status_code == 401
        with connect(f"{ws_url}{path}?clientId=q&token={TOKEN}") as socket:
            message = json.loads(socket.recv(timeout=10))
            assert message["type"] == "status" and message["data"]["sid"] == "q"
        with connect(f"{ws_url}{path}", additional_headers=BEARER) as socket:
            assert json.loads(socket.recv(timeout=10))["type"] == "status"


def test_sse_needs_credentials(mesh: Mesh) -> None:
    with httpx.Client(base_url=mesh.url, timeout=30) as anonymous:
        assert status_of(anonymous, "GET", "/v1/events") == 401
        assert status_of(anonymous, "GET", "/v1/events?token=wrong") == 401
        assert status_of(anonymous, "GET", f"/v1/events?token={TOKEN}") == 200
        # only streams take ?token=: it would end up in logs and browser history elsewhere
        assert status_of(anonymous, "GET", f"/v1/jobs?token={TOKEN}") == 401
    assert status_of(mesh.http, "GET", "/v1/events") == 200


def _jwt(key: str = JWT_SECRET, **claims: object) -> str:
    return jwt.encode({"sub": "alice", "exp": int(time.time()) + 300, **claims}, key, algorithm="HS256")


# tokens are made when the test runs, not at collection: a long suite would outlive a collected token's expiry
@pytest.mark.parametrize(("make_token", "status", "reason"), [
    (lambda: _jwt(), 200, ""),
    (lambda: _jwt(exp=int(time.time()) - 120), 401, "expired"),
    (lambda: _jwt(key="another-secret-that-is-long-enough!!"), 401, "not signed by any key"),
    (lambda: _jwt(sub="mallory"), 401, "COMFYMESH_JWT_ALLOWED_USERS"),
    (lambda: jwt.encode({"sub": "alice"}, JWT_SECRET, algorithm="HS256"), 401, "exp"),
], ids=["valid", "expired", "wrong-key", "not-allowed", "no-expiry"])
def test_jwt(mesh: Mesh, make_token: Callable[[], str], status: int, reason: str) -> None:
    reply = httpx.get(f"{mesh.url}/v1/jobs", headers={"Authorization": f"Bearer {make_token()}"})
    assert reply.status_code == status
    if status == 401:
        assert reason in reply.json()["detail"]
        assert 'error="invalid_token"' in reply.headers["www-authenticate"]


def test_grpc_needs_the_internal_secret(mesh: Mesh) -> None:
    orchestrator = mesh.env["COMFYMESH_ORCHESTRATOR"]
    imaging = mesh.env["COMFYMESH_IMAGING_REPLICAS"]

    async def calls() -> dict[str, object]:
        results: dict[str, object] = {}
        async with grpc.aio.insecure_channel(orchestrator) as channel, \
                grpc.aio.insecure_channel(imaging) as stage_channel:
            stub = orchestrator_pb2_grpc.OrchestratorStub(channel)
            for name, metadata in (("none", ()), ("wrong", ((METADATA_KEY, "wrong"),)),
                                   ("right", ((METADATA_KEY, INTERNAL),))):
                try:
                    await stub.ListCheckpoints(orchestrator_pb2.ListCheckpointsRequest(), metadata=metadata, timeout=10)
                    results[name] = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as exc:
                    results[name] = exc.code()
            try:  # a server-streaming call is refused the same way
                async for _ in stub.StreamStatus(orchestrator_pb2.StreamStatusRequest(), timeout=10):
                    break
            except grpc.aio.AioRpcError as exc:
                results["stream"] = exc.code()
            try:
                await stage_pb2_grpc.StageStub(stage_channel).Describe(stage_pb2.DescribeRequest(), timeout=10)
            except grpc.aio.AioRpcError as exc:
                results["stage"] = exc.code()
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            results["health"] = health.status
        return results

    results = asyncio.run(calls())
    assert results == {"none": grpc.StatusCode.UNAUTHENTICATED, "wrong": grpc.StatusCode.UNAUTHENTICATED,
                       "right": grpc.StatusCode.OK, "stream": grpc.StatusCode.UNAUTHENTICATED,
                       "stage": grpc.StatusCode.UNAUTHENTICATED, "health": health_pb2.HealthCheckResponse.SERVING}


def test_a_job_runs_end_to_end_with_auth_on(mesh: Mesh) -> None:
    prompt = json.loads((SHARED / "workflows" / "imaging_pipeline.json").read_text())
    job = mesh.wait(mesh.submit(prompt))
    assert job["status"] == "completed", (job, mesh.logs[-30:])
    assert mesh.http.get(f"/v1/jobs/{job['job_id']}/output").headers["content-type"] == "image/png"
    assert not [line for line in mesh.logs if TOKEN in line or INTERNAL in line or JWT_SECRET in line]


def test_the_audit_trail_names_who_submitted(mesh: Mesh) -> None:
    prompt = json.loads((SHARED / "workflows" / "imaging_pipeline.json").read_text())
    for node in prompt.values():  # not the cached run of the test above: a stage call must happen
        if node["class_type"] == "SaveImage":
            node["inputs"]["filename_prefix"] = "audited"
    reply = httpx.post(f"{mesh.url}/v1/workflows", json={"prompt": prompt},
                       headers={"Authorization": f"Bearer {_jwt()}"})
    assert reply.status_code == 202, reply.text
    job_id = reply.json()["job_id"]
    assert mesh.wait(job_id)["status"] == "completed"
    entries = [json.loads(line.split(": ", 1)[1]) for line in mesh.logs
               if job_id in line and ('"job accepted"' in line or '"RunStage"' in line)]
    assert {e["msg"] for e in entries} == {"job accepted", "RunStage"}
    assert all(e["user"] == "alice" for e in entries), entries


def test_gateway_refuses_a_public_address_without_auth(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("COMFYMESH_API_TOKEN", "COMFYMESH_JWT_KEYS")}
    env["COMFYMESH_HOME"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-m", "comfymesh.gateway", "--host", "0.0.0.0", "--port",
                             str(free_port())], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "refusing to listen on 0.0.0.0" in result.stderr and "COMFYMESH_API_TOKEN" in result.stderr


def from_address(mesh: Mesh, address: str) -> httpx.Client:
    """A client whose requests come from another loopback address: each lockout test locks out its own."""
    return httpx.Client(base_url=mesh.url, timeout=30, transport=httpx.HTTPTransport(local_address=address))


def test_wrong_bearer_tokens_are_throttled_on_every_route(mesh: Mesh) -> None:
    with from_address(mesh, "127.0.0.2") as guesser:
        statuses = [guesser.get("/v1/jobs", headers={"Authorization": f"Bearer guess-{n}"}).status_code
                    for n in range(100)]
        assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}, statuses
        locked = guesser.get("/v1/jobs", headers=BEARER)  # not even the right token is checked now
        assert locked.status_code == 429 and 30 <= int(locked.headers["retry-after"]) <= 900
        assert "try again in" in locked.json()["detail"]
        for method, path in (("POST", "/prompt"), ("GET", "/queue"), ("POST", "/upload/image")):
            assert guesser.request(method, path, headers=BEARER).status_code == 429, path
        login = guesser.post("/login", data={"token": TOKEN, "next": "/"})
        assert login.status_code == 429  # the form and the header share one record
        # a session cookie cannot be guessed, so a browser logged in elsewhere still gets in from here
        assert guesser.get("/queue", headers={"Cookie": _login(mesh)}).status_code == 200
    assert mesh.http.get("/v1/jobs").status_code == 200  # other addresses are not affected


def test_wrong_query_tokens_on_websocket_and_sse_are_throttled(mesh: Mesh) -> None:
    ws_url = mesh.url.replace("http", "ws", 1)
    statuses = []
    for n in range(8):
        with pytest.raises(InvalidStatus) as refused:
            connect(f"{ws_url}/ws?token=guess-{n}", source_address=("127.0.0.3", 0)).close()
        statuses.append(refused.value.response.status_code)
    assert statuses == [401] * 5 + [429] * 3
    with pytest.raises(InvalidStatus) as refused:
        connect(f"{ws_url}/ws?token={TOKEN}", source_address=("127.0.0.3", 0)).close()
    assert refused.value.response.status_code == 429
    with from_address(mesh, "127.0.0.4") as guesser:
        statuses = [status_of(guesser, "GET", f"/v1/events?token=guess-{n}") for n in range(8)]
        assert statuses == [401] * 5 + [429] * 3
        assert status_of(guesser, "GET", f"/v1/events?token={TOKEN}") == 429


def test_logout_revokes_the_session_for_good(mesh: Mesh) -> None:
    cookie = _login(mesh)
    assert httpx.get(f"{mesh.url}/queue", headers={"Cookie": cookie}).status_code == 200
    other = _login(mesh)
    logout = httpx.get(f"{mesh.url}/logout", headers={"Cookie": cookie}, follow_redirects=False)
    assert logout.status_code == 303 and 'comfymesh_session=""' in logout.headers["set-cookie"]
    # a copy of the cookie (another tab, a stolen one) no longer opens anything, HTTP or websocket
    refused = httpx.get(f"{mesh.url}/queue", headers={"Cookie": cookie})
    assert refused.status_code == 401 and "logged out" in refused.json()["detail"]
    ws_url = mesh.url.replace("http", "ws", 1)
    with pytest.raises(InvalidStatus):
        connect(f"{ws_url}/ws", additional_headers={"Cookie": cookie}).close()
    mesh.restart("gateway")
    assert httpx.get(f"{mesh.url}/queue", headers={"Cookie": cookie}).status_code == 401
    assert httpx.get(f"{mesh.url}/queue", headers={"Cookie": other}).status_code == 200  # only that session
    assert oct((mesh.home / "revoked_sessions.json").stat().st_mode & 0o777) == "0o600"
