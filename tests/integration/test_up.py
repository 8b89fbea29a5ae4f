"""`comfymesh up`: starts every service, prints the URL, restarts a dead service, stops all on Ctrl+C."""

from __future__ import annotations

import asyncio
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import httpx

from comfymesh.v1.orchestrator_pb2 import ListCheckpointsRequest
from comfymesh.v1.orchestrator_pb2_grpc import OrchestratorStub
from tests.mesh import SHARED, free_port


def find_pids(pattern: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if pattern in command:
            pids.append(int(entry.name))
    return pids


def list_checkpoints_code(address: str) -> grpc.StatusCode:
    async def call() -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(address) as channel:
            try:
                await OrchestratorStub(channel).ListCheckpoints(ListCheckpointsRequest(), timeout=10)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
        return grpc.StatusCode.OK

    return asyncio.run(call())


def test_up_supervises_the_mesh(tmp_path: Path) -> None:
    imaging = f"127.0.0.1:{free_port()}"
    port = free_port()
    env = {**os.environ, "COMFYMESH_HOME": str(tmp_path / "data"), "COMFYMESH_PORT": str(port),
           "COMFYMESH_ORCHESTRATOR": f"127.0.0.1:{free_port()}", "COMFYMESH_IMAGING_REPLICAS": imaging}
    up = subprocess.Popen([sys.executable, "-m", "comfymesh.cli.main", "up", "--without-diffusion"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in up.stdout], daemon=True).start()  # type: ignore[union-attr]

    def wait_for(text: str, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            if text in line:
                return line
        raise AssertionError(f"never saw {text!r}")

    try:
        assert f"http://127.0.0.1:{port}" in wait_for("comfymesh is up")
        for folder in ("models/checkpoints", "input", "output", "artifacts"):
            assert (tmp_path / "data" / folder).is_dir()
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200

        [imaging_pid] = find_pids(f"comfymesh.imaging --listen {imaging}")
        os.kill(imaging_pid, signal.SIGKILL)
        wait_for("imaging exited with code -9; restarting")
        wait_for("imaging stage listening on")
        assert find_pids(f"comfymesh.imaging --listen {imaging}") != [imaging_pid]

        shutil.copy(SHARED / "data" / "coffee.png", tmp_path / "data" / "input" / "example.png")
        prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
                  "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "up"}}}
        job_id = httpx.post(f"http://127.0.0.1:{port}/v1/workflows", json=prompt).json()["job_id"]
        deadline = time.monotonic() + 60
        while httpx.get(f"http://127.0.0.1:{port}/v1/jobs/{job_id}").json()["status"] != "completed":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        # the services share a secret `up` generated: another local process cannot call them
        assert list_checkpoints_code(env["COMFYMESH_ORCHESTRATOR"]) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        os.kill(up.pid, signal.SIGINT)
        assert up.wait(30) == 0
    time.sleep(0.5)
    assert find_pids(env["COMFYMESH_ORCHESTRATOR"]) == []
    assert find_pids(f"comfymesh.imaging --listen {imaging}") == []
