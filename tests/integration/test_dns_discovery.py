"""Stage replicas found in DNS (acceptance 5 of issue 18), through real processes: two imaging stages on
127.0.0.2 and 127.0.0.3 (all of 127/8 is loopback on Linux) behind one name, resolved through a hosts file
the test writes (COMFYMESH_HOSTS_FILE), with the default re-resolution period."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.mesh import Mesh

FIRST, SECOND = "127.0.0.2", "127.0.0.3"


def _port_free_on_both() -> int:
    with socket.socket() as sock:
        sock.bind((FIRST, 0))
        port = int(sock.getsockname()[1])
    with socket.socket() as sock:
        sock.bind((SECOND, port))
    return port


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dns") / "hosts"
    path.write_text(f"{FIRST} imaging.test\n")
    return path


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, hosts: Path) -> Iterator[Mesh]:
    port = _port_free_on_both()
    mesh = Mesh(tmp_path_factory.mktemp("home"), imaging_listen=[f"{FIRST}:{port}", f"{SECOND}:{port}"],
                env={"COMFYMESH_IMAGING_REPLICAS": f"dns:///imaging.test:{port}",
                     "COMFYMESH_HOSTS_FILE": str(hosts), "COMFYMESH_STAGE_DRAIN_S": "60"})
    try:
        yield mesh.start()
    finally:
        mesh.stop()


def blur(color: int, size: int = 64, blurs: int = 1) -> dict[str, Any]:
    """EmptyImage, `blurs` ImageBlurs in a row, SaveImage: one imaging call (a new color: no cache hit)."""
    prompt: dict[str, Any] = {"empty": {"class_type": "EmptyImage", "inputs": {
        "width": size, "height": size, "batch_size": 1, "color": color}}}
    previous = "empty"
    for i in range(blurs):
        prompt[f"blur{i}"] = {"class_type": "ImageBlur",
                              "inputs": {"image": [previous, 0], "blur_radius": 15, "sigma": 5.0}}
        previous = f"blur{i}"
    prompt["save"] = {"class_type": "SaveImage", "inputs": {"images": [previous, 0], "filename_prefix": "dns"}}
    return prompt


def calls(mesh: Mesh, service: str, job_id: str = "") -> int:
    """RunStage calls the stage process logged (for one job, if given)."""
    return sum(1 for line in list(mesh.logs)
               if line.startswith(f"{service}: ") and '"RunStage"' in line and job_id in line)


COLORS = iter(range(0x100000, 0x200000, 7))


def test_a_host_added_to_dns_gets_a_run_stage_within_10_s(mesh: Mesh, hosts: Path) -> None:
    for _ in range(3):
        assert mesh.wait(mesh.submit(blur(next(COLORS))))["status"] == "completed"
    assert calls(mesh, "imaging0") >= 3 and calls(mesh, "imaging1") == 0  # not in DNS yet
    hosts.write_text(f"{FIRST} imaging.test\n{SECOND} imaging.test\n")
    added = time.monotonic()
    while calls(mesh, "imaging1") == 0:
        assert time.monotonic() - added < 10, "the added host got no RunStage within 10 s"
        assert mesh.wait(mesh.submit(blur(next(COLORS))))["status"] == "completed"


def test_a_draining_host_gets_no_new_call_after_2_s_and_finishes_its_calls(mesh: Mesh) -> None:
    # two slow jobs at once: the second goes to the replica the first left free
    slow = [mesh.submit(blur(next(COLORS), size=1024, blurs=8)) for _ in range(2)]
    deadline = time.monotonic() + 60
    while not all(calls(mesh, "imaging0", j) + calls(mesh, "imaging1", j) for j in slow):
        assert time.monotonic() < deadline, "the slow jobs never started"
        time.sleep(0.05)
    on_second = next(j for j in slow if calls(mesh, "imaging1", j))
    stage = mesh.service("imaging1").process
    os.kill(stage.pid, signal.SIGTERM)
    drained = time.monotonic()
    assert mesh.http.get(f"/v1/jobs/{on_second}").json()["status"] == "running"
    time.sleep(2.0)  # the acceptance's window: a call sent after it must not reach the draining host
    before = calls(mesh, "imaging1")
    quick = [mesh.submit(blur(next(COLORS))) for _ in range(4)]
    for job_id in quick:
        assert mesh.wait(job_id)["status"] == "completed"
    assert calls(mesh, "imaging1") == before, "a call reached the draining host"
    for job_id in slow:  # its call in flight finished on the draining host
        assert mesh.wait(job_id, timeout=120)["status"] == "completed", mesh.logs[-20:]
    assert stage.wait(timeout=60) == 0  # exits by itself once drained
    assert time.monotonic() - drained < 60


def test_a_name_with_no_records_fails_the_job(mesh: Mesh, hosts: Path) -> None:
    hosts.write_text(f"{FIRST} other.test\n")  # imaging.test now has no record (.test names never resolve)
    removed = time.monotonic()
    while True:
        job = mesh.wait(mesh.submit(blur(next(COLORS))), timeout=30)  # never hangs
        if job["status"] == "failed":
            break
        assert time.monotonic() - removed < 15, "jobs still ran after the name lost its records"
    assert "no imaging replica resolved from dns:///imaging.test:" in job["error"]["message"], job["error"]
