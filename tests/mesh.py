"""A real mesh for tests: every service as its own process on free loopback ports, in a temp data root."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import sqlite3
import time
from collections.abc import Container
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from comfymesh.cli.supervisor import ServiceSpec, Supervisor

REPO = Path(__file__).resolve().parents[1]
# our own copy of the reference photos and sample workflows (tests/shared/README.md)
SHARED = REPO / "tests" / "shared"


def free_ports(count: int, avoid: Container[int] = ()) -> list[int]:
    """`count` distinct free ports, none in `avoid`: each stays bound until all are drawn, since two
    separate draws may hand out the same port (SeaweedFS's filer once got it for its HTTP and gRPC ports)."""
    with contextlib.ExitStack() as held:
        ports: list[int] = []
        while len(ports) < count:
            sock = held.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            if port not in avoid:
                ports.append(port)
        return ports


def free_port() -> int:
    return free_ports(1)[0]


class Mesh:
    """Start, kill and restart services; talk to the gateway with `http`."""

    def __init__(self, home: Path, stages: tuple[str, ...] = ("imaging",), env: dict[str, str] | None = None,
                 imaging_replicas: int = 1, diffusion_replicas: int = 1,
                 imaging_listen: list[str] | None = None) -> None:
        self.home = home
        for folder in ("input", "output", "temp", "models/checkpoints", "models/loras", "models/vae"):
            (home / folder).mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        orchestrator = f"127.0.0.1:{free_port()}"
        # imaging_listen: where the imaging stages listen (e.g. 127.0.0.x hosts behind one DNS name)
        imaging = imaging_listen or [f"127.0.0.1:{free_port()}" for _ in range(imaging_replicas)]
        # a stage that is not started is not configured (the orchestrator would wait for its nodes)
        diffusion = [f"127.0.0.1:{free_port()}" for _ in range(diffusion_replicas)] if "diffusion" in stages else []
        self.env = {**os.environ, "COMFYMESH_HOME": str(home), "COMFYMESH_ORCHESTRATOR": orchestrator,
                    "COMFYMESH_IMAGING_REPLICAS": ",".join(imaging), "COMFYMESH_DIFFUSION_REPLICAS": ",".join(diffusion),
                    "COMFYMESH_PORT": str(self.port), "COMFYMESH_LOG_JSON": "true",
                    # tensors must never cross gRPC: any message over 512 KiB fails the call (the node catalog,
                    # every declaration with ComfyUI's tooltips, is the largest control message: 74 KB at 125 nodes)
                    "COMFYMESH_GRPC_MAX_MESSAGE_BYTES": "524288",
                    # tests post hundreds of requests a second; the limiter has its own test
                    "COMFYMESH_RATE_LIMIT_PER_MIN": "0",
                    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
        specs = [ServiceSpec(f"imaging{i}", ["comfymesh.imaging", "--listen", address])
                 for i, address in enumerate(imaging)]
        if "diffusion" in stages:
            specs += [ServiceSpec("diffusion" if i == 0 else f"diffusion{i}", ["comfymesh.diffusion", "--listen", address])
                      for i, address in enumerate(diffusion)]
        specs += [ServiceSpec("orchestrator", ["comfymesh.orchestrator", "--listen", orchestrator]),
                  ServiceSpec("gateway", ["comfymesh.gateway", "--port", str(self.port)])]
        self.logs: list[str] = []
        self.supervisor = Supervisor(specs, self.env, lambda name, line: self.logs.append(f"{name}: {line}"))
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def start(self) -> Mesh:
        self.supervisor.start_all(timeout=120)
        return self.wait_ready()

    def wait_ready(self) -> Mesh:
        """Wait until the gateway answers /readyz (the orchestrator is reachable)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if self.http.get("/readyz").status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("gateway never became ready:\n" + "\n".join(self.logs[-40:]))

    def wait_not_ready(self, missing: list[str], timeout: float = 60) -> dict[str, Any]:
        """Poll /readyz (the gateway may still be starting) until it answers 503 naming `missing`; its body."""
        deadline = time.monotonic() + timeout
        answer = None
        while time.monotonic() < deadline:
            try:
                answer = self.http.get("/readyz")
                if answer.status_code == 503 and answer.json().get("missing") == missing:
                    return dict(answer.json())
            except httpx.HTTPError:
                pass
            time.sleep(0.1)  # the poll's interval
        raise AssertionError(f"/readyz never named {missing}: {answer.text if answer is not None else 'no answer'}")

    def stop(self) -> None:
        self.http.close()
        self.supervisor.stop(grace=5)

    def service(self, name: str) -> Any:
        return next(s for s in self.supervisor.services if s.spec.name == name)

    def kill(self, name: str) -> None:
        process = self.service(name).process
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def restart(self, name: str) -> None:
        service = self.service(name)
        if service.process and service.process.poll() is None:
            self.kill(name)
        self.supervisor._start(service)
        if not service.ready.wait(60):
            raise RuntimeError(f"{name} did not restart")
        self.wait_ready()

    def submit(self, prompt: dict[str, Any], **extra: Any) -> str:
        reply = self.http.post("/v1/workflows", json={"prompt": prompt, **extra})
        assert reply.status_code == 202, reply.text
        return str(reply.json()["job_id"])

    def wait(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.http.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in ("completed", "failed", "cancelled"):
                return dict(job)
            time.sleep(0.05)
        raise TimeoutError(f"job {job_id} did not finish:\n" + "\n".join(self.logs[-40:]))

    def run_output(self, prompt: dict[str, Any], timeout: float = 300) -> bytes:
        """Run `prompt` to completion and return its first output image's bytes."""
        job = self.wait(self.submit(prompt), timeout=timeout)
        assert job["status"] == "completed", job["error"]
        return bytes(self.http.get(f"/v1/jobs/{job['job_id']}/output").content)

    def forget_cache(self) -> None:
        """Delete every cached node output, so the next run of a prompt computes every node again."""
        with sqlite3.connect(self.home / "comfymesh.db") as db:
            db.execute("DELETE FROM node_cache")

    def events(self, path: str, last_event_id: int | None = None) -> list[dict[str, Any]]:
        """Read an SSE stream to its end: [{id, event, data}]."""
        import json

        headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
        events: list[dict[str, Any]] = []
        current: dict[str, Any] = {}
        with self.http.stream("GET", path, headers=headers, timeout=60) as stream:
            for line in stream.iter_lines():
                if not line:
                    if "event" in current:
                        events.append(current)
                    current = {}
                elif line.startswith("id:"):
                    current["id"] = int(line[3:].strip())
                elif line.startswith("event:"):
                    current["event"] = line[6:].strip()
                elif line.startswith("data:"):
                    current["data"] = json.loads(line[5:])
        return events


def assert_reruns_identically(mesh: Mesh, prompt: dict[str, Any]) -> bytes:
    """Run `prompt`, forget the node cache, and run it again: the recomputed output must have the same bytes (a
    graph on fixed seeds is deterministic). Returns that output."""
    first = mesh.run_output(prompt)
    mesh.forget_cache()
    assert mesh.run_output(prompt) == first
    return first


def png_pixels(png: bytes) -> np.ndarray:
    """An output's PNG bytes as its pixel array [H, W, channels]: compared by value, not by file bytes."""
    return np.asarray(Image.open(io.BytesIO(png)))


def sigint_default() -> None:
    """A child's Ctrl+C as a terminal gives it, whatever this process inherited: a shell that starts a job in the
    background hands it SIGINT ignored, and an ignored SIGINT would stay ignored in the child too."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
