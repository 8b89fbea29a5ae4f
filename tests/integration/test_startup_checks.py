"""Services refuse to start when they could not serve safely, at once and with a message that says what to do:
a damaged job database, jobs that cannot be recovered, a gRPC listen beyond loopback with no internal secret,
a token too short to resist guessing."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from comfymesh.jobs import JobStore
from tests.mesh import free_port

PAGE = 4096


def start(args: list[str], home: Path, **env: str) -> subprocess.Popen[str]:
    clean = {key: value for key, value in os.environ.items()
             if key not in ("COMFYMESH_API_TOKEN", "COMFYMESH_INTERNAL_SECRET", "COMFYMESH_JWT_KEYS")}
    return subprocess.Popen([sys.executable, "-m", *args], env={**clean, "COMFYMESH_HOME": str(home), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def refusal(args: list[str], home: Path, **env: str) -> str:
    """The service's stderr, once it has exited non-zero (within 30 s)."""
    process = start(args, home, **env)
    try:
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode not in (0, None), stderr
    return stderr


def starts(args: list[str], home: Path, **env: str) -> None:
    """The service prints its `listening on` line (then it is stopped)."""
    process = start(args, home, **env)
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        for line in process.stdout:
            if " listening on " in line:
                return
            assert time.monotonic() < deadline
        raise AssertionError(f"exited with {process.wait()} before listening: {process.stderr.read()}")  # type: ignore[union-attr]
    finally:
        process.kill()
        process.wait()


def database_with_jobs(path: Path, count: int = 300) -> None:
    store = JobStore(path)
    for index in range(count):
        store.add_job(f"job{index}", index, {"1": {"class_type": "LoadImage", "inputs": {"image": "x" * 200}}}, {},
                      "client", ["1"], {"1": "LoadImage"})
    store.close()  # the last connection folds the WAL into the file


def orchestrator() -> list[str]:
    return ["comfymesh.orchestrator", "--listen", f"127.0.0.1:{free_port()}"]


def test_a_damaged_database_is_refused_at_start(tmp_path: Path) -> None:
    database_with_jobs(tmp_path / "comfymesh.db")
    starts(orchestrator(), tmp_path)  # untouched, it starts
    path = tmp_path / "comfymesh.db"
    pages = path.stat().st_size // PAGE
    with path.open("r+b") as handle:  # garbage over a few pages in the middle, as a failing disk leaves them
        for page in range(pages // 2, pages // 2 + 4):
            handle.seek(page * PAGE)
            handle.write(os.urandom(PAGE))
    began = time.monotonic()
    stderr = refusal(orchestrator(), tmp_path)
    assert time.monotonic() - began < 15
    assert f"the job database {path} is damaged" in stderr, stderr
    assert "backup" in stderr and ".recover" in stderr and "move" in stderr


def test_jobs_that_cannot_be_recovered_stop_the_orchestrator(tmp_path: Path) -> None:
    path = tmp_path / "comfymesh.db"
    database_with_jobs(path, count=3)
    with sqlite3.connect(path) as db:  # intact pages, unreadable content: quick_check cannot see it
        db.execute("UPDATE jobs SET status = 'running', prompt_json = '{broken' WHERE id = 'job1'")
    db.close()
    stderr = refusal(orchestrator(), tmp_path)
    assert f"re-queueing the jobs in {path} failed" in stderr, stderr
    assert "recovery failed" in stderr  # the log line, with its traceback


@pytest.mark.parametrize("service", ["comfymesh.imaging", "comfymesh.orchestrator"])
def test_grpc_beyond_loopback_needs_the_internal_secret(tmp_path: Path, service: str) -> None:
    stderr = refusal([service, "--listen", f"0.0.0.0:{free_port()}"], tmp_path)
    assert "refusing to listen on 0.0.0.0" in stderr and "COMFYMESH_INTERNAL_SECRET" in stderr, stderr


@pytest.mark.parametrize(("service", "setting"), [("comfymesh.gateway", "COMFYMESH_API_TOKEN"),
                                                  ("comfymesh.orchestrator", "COMFYMESH_INTERNAL_SECRET")])
def test_short_tokens_are_refused(tmp_path: Path, service: str, setting: str) -> None:
    stderr = refusal([service], tmp_path, **{setting: "hunter2-hunter2"})  # 15 characters
    assert f"{setting}: 15 characters is too short" in stderr, stderr
    assert "secrets.token_urlsafe(32)" in stderr and "hunter2" not in stderr
