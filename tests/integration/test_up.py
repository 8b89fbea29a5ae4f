"""`comfymesh up`: starts every service, prints the URL, restarts a dead service, and stops all with it,
however it ends: Ctrl+C (even when started with SIGINT ignored), SIGTERM, SIGHUP, kill -9, a closed pipe."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from comfymesh.v1.orchestrator_pb2 import ListCheckpointsRequest
from comfymesh.v1.orchestrator_pb2_grpc import OrchestratorStub
from tests.mesh import SHARED, free_port, sigint_default


def find_pids(pattern: str) -> list[int]:
    """Live processes whose command line contains `pattern` (a zombie's is empty)."""
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


class Up:
    """`comfymesh up --without-diffusion` on free ports, in its own session, its output on a pipe this test
    reads (and may close)."""

    def __init__(self, home: Path, ignore_sigint: bool = False) -> None:
        self.port = free_port()
        self.imaging = f"127.0.0.1:{free_port()}"
        self.orchestrator = f"127.0.0.1:{free_port()}"
        self.env = {**os.environ, "COMFYMESH_HOME": str(home), "COMFYMESH_PORT": str(self.port),
                    "COMFYMESH_ORCHESTRATOR": self.orchestrator, "COMFYMESH_IMAGING_REPLICAS": self.imaging}
        command = [sys.executable, "-m", "comfymesh.cli.main", "up", "--without-diffusion"]
        if ignore_sigint:  # as a shell starts a background job: SIGINT ignored, inherited through exec
            command = ["sh", "-c", 'trap "" INT; exec "$0" "$@"', *command]
        self.output, write = os.pipe()
        self.process = subprocess.Popen(command, env=self.env, stdout=write, stderr=subprocess.STDOUT,
                                        start_new_session=True, preexec_fn=sigint_default)
        os.close(write)
        self.text = ""
        self.cursor = 0
        self.seen: list[int] = []  # every service process found, for the cleanup

    @property
    def patterns(self) -> list[str]:
        return [f"--listen {self.imaging}", f"--listen {self.orchestrator}", f"--port {self.port}"]

    def service_pids(self) -> list[int]:
        pids = [pid for pattern in self.patterns for pid in find_pids(pattern)]
        self.seen += [pid for pid in pids if pid not in self.seen]
        return pids

    def wait_for(self, text: str, timeout: float = 90) -> None:
        """Wait for `text` in the output after what earlier waits found."""
        deadline = time.monotonic() + timeout
        while (found := self.text.find(text, self.cursor)) < 0:
            left = deadline - time.monotonic()
            assert left > 0, f"never saw {text!r} in:\n{self.text[-3000:]}"
            if select.select([self.output], [], [], min(left, 1.0))[0]:
                chunk = os.read(self.output, 65536)
                assert chunk, f"`up` closed its output before {text!r}:\n{self.text[-3000:]}"
                self.text += chunk.decode(errors="replace")
        self.cursor = found + len(text)

    def close_output(self) -> None:
        os.close(self.output)
        self.output = -1

    def wait_gone(self, timeout: float = 30) -> None:
        """`up` ended, no service of it is left and its ports are free (a process that is exiting may
        show no command line while its sockets are still open: both are polled)."""
        self.process.wait(timeout)
        deadline = time.monotonic() + 15
        while True:
            pids, held = self.service_pids(), self.ports_held()
            if not pids and not held:
                return
            assert time.monotonic() < deadline, f"left behind: services {pids}, ports {held}"
            time.sleep(0.1)

    def ports_held(self) -> list[str]:
        held = []
        for address in (self.imaging, self.orchestrator, f"127.0.0.1:{self.port}"):
            host, port = address.rsplit(":", 1)
            with socket.socket() as probe:
                if probe.connect_ex((host, int(port))) == 0:
                    held.append(address)
        return held

    def cleanup(self) -> None:
        """Whatever happened: kill `up` and every service process this test saw or can find."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        for pid in {*self.seen, *self.service_pids()}:
            for kill in (os.killpg, os.kill):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    kill(pid, signal.SIGKILL)
        if self.output >= 0:
            os.close(self.output)


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Up]:
    up = Up(tmp_path / "data")
    try:
        up.wait_for("comfymesh is up")
        assert len(up.service_pids()) == 3
        yield up
    finally:
        up.cleanup()


def list_checkpoints_code(address: str) -> grpc.StatusCode:
    async def call() -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(address) as channel:
            try:
                await OrchestratorStub(channel).ListCheckpoints(ListCheckpointsRequest(), timeout=10)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
        return grpc.StatusCode.OK

    return asyncio.run(call())


def test_up_supervises_the_mesh(started: Up, tmp_path: Path) -> None:
    up = started
    assert f"http://127.0.0.1:{up.port}" in up.text
    for folder in ("models/checkpoints", "input", "output", "artifacts"):
        assert (tmp_path / "data" / folder).is_dir()
    assert httpx.get(f"http://127.0.0.1:{up.port}/readyz").status_code == 200

    [imaging_pid] = find_pids(f"comfymesh.imaging --listen {up.imaging}")
    os.kill(imaging_pid, signal.SIGKILL)
    up.wait_for("imaging exited with code -9; restarting")
    up.wait_for("imaging stage listening on")
    assert find_pids(f"comfymesh.imaging --listen {up.imaging}") not in ([], [imaging_pid])

    shutil.copy(SHARED / "data" / "coffee.png", tmp_path / "data" / "input" / "example.png")
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "up"}}}
    job_id = httpx.post(f"http://127.0.0.1:{up.port}/v1/workflows", json=prompt).json()["job_id"]
    deadline = time.monotonic() + 60
    while httpx.get(f"http://127.0.0.1:{up.port}/v1/jobs/{job_id}").json()["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    # the services share a secret `up` generated: another local process cannot call them
    assert list_checkpoints_code(up.orchestrator) == grpc.StatusCode.UNAUTHENTICATED

    os.kill(up.process.pid, signal.SIGINT)
    up.wait_gone()
    assert up.process.returncode == 0


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM, signal.SIGKILL])
def test_its_services_die_with_it(started: Up, signum: int) -> None:
    # SIGHUP: a closed terminal or a dropped ssh session; SIGKILL: no chance to clean up (the kernel does)
    os.kill(started.process.pid, signum)
    started.wait_gone()


def test_a_closed_output_pipe_does_not_skip_the_shutdown(started: Up) -> None:
    started.close_output()
    # output follows (a restart's lines), and every write now fails with EPIPE
    [imaging_pid] = find_pids(f"comfymesh.imaging --listen {started.imaging}")
    os.kill(imaging_pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while find_pids(f"comfymesh.imaging --listen {started.imaging}") in ([], [imaging_pid]):
        assert time.monotonic() < deadline, "the imaging stage was not restarted"
        time.sleep(0.1)
    assert started.process.poll() is None  # still supervising
    os.kill(started.process.pid, signal.SIGTERM)
    started.wait_gone()


def test_ctrl_c_works_when_started_with_sigint_ignored(tmp_path: Path) -> None:
    up = Up(tmp_path / "data", ignore_sigint=True)
    try:
        up.wait_for("comfymesh is up")
        assert len(up.service_pids()) == 3
        os.kill(up.process.pid, signal.SIGINT)
        up.wait_gone()
    finally:
        up.cleanup()
