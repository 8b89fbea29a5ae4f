"""The operators' view of a running cluster on a real mesh (imaging and a CPU diffusion stage, one job at a time):
GET /v1/cluster, `comfymesh status --once` and the /ui/cluster page in headless chromium all show the same
things: the queued job, the running job on its node, each replica with its health and slots in use, the model
the diffusion stage loaded with its memory, and a recent failure with its node."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from comfymesh.cli.supervisor import ServiceSpec, Supervisor
from tests.e2e.chromium import chromium_page
from tests.mesh import SHARED, Mesh, sigint_default

HANGING = "ImageCrop"  # hangs until cancelled (COMFYMESH_TEST_HANG_NODES): a job that stays running
CHECKPOINT = "tiny.safetensors"
BROKEN = "broken.safetensors"  # listed, so it passes validation; its loader fails when the job runs


@dataclass(frozen=True)
class Busy:
    mesh: Mesh
    running: str  # the job on its hanging node
    queued: str  # waiting behind it (one job at a time)
    failed: str  # failed at its checkpoint loader
    completed: str  # a txt2img job run to its end
    sampling: dict[str, Any]  # a long sampler's entry in `running`, seen while it ran (then it was cancelled)


def _home(root: Path) -> Path:
    checkpoints = root / "models" / "checkpoints"
    checkpoints.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "comfymesh.diffusion.models.tiny_checkpoint", "--family", "sd15",
                    str(checkpoints / CHECKPOINT)], check=True, capture_output=True)
    (checkpoints / BROKEN).write_bytes(b"not a safetensors file")
    (root / "input").mkdir()
    (root / "input" / "example.png").write_bytes((SHARED / "data" / "coffee.png").read_bytes())
    return root


def txt2img(checkpoint: str) -> dict[str, Any]:
    graph: dict[str, Any] = json.loads((SHARED / "workflows" / "txt2img_sd15.json").read_text())
    graph["4"]["inputs"]["ckpt_name"] = checkpoint
    graph["3"]["inputs"].update(seed=1, steps=2)
    graph["5"]["inputs"].update(width=64, height=64)
    return graph


def hanging() -> dict[str, Any]:
    graph: dict[str, Any] = json.loads((SHARED / "workflows" / "imaging_pipeline.json").read_text())
    graph["5"] = {"class_type": HANGING, "inputs": {"image": ["4", 0], "width": 64, "height": 64, "x": 0, "y": 0}}
    return graph


def cluster_until(mesh: Mesh, done: Any, timeout: float = 60.0) -> dict[str, Any]:
    """Poll GET /v1/cluster until `done(view)` holds."""
    deadline = time.monotonic() + timeout
    while True:
        reply = mesh.http.get("/v1/cluster")
        assert reply.status_code == 200, reply.text
        view: dict[str, Any] = reply.json()
        if done(view):
            return view
        assert time.monotonic() < deadline, json.dumps(view, indent=1)
        time.sleep(0.1)


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Busy]:
    mesh = Mesh(_home(tmp_path_factory.mktemp("cluster-view")), stages=("imaging", "diffusion"),
                env={"COMFYMESH_TEST_HANG_NODES": HANGING, "COMFYMESH_MAX_RUNNING_JOBS": "1"})
    try:
        mesh.start()
        completed = mesh.submit(txt2img(CHECKPOINT))
        job = mesh.wait(completed)
        assert job["status"] == "completed", job["error"]
        failed = mesh.submit(txt2img(BROKEN))
        assert mesh.wait(failed)["status"] == "failed"
        long_run = txt2img(CHECKPOINT)
        long_run["3"]["inputs"]["steps"] = 1000  # the most allowed: seconds of sampling on the CPU, long enough to see
        sampler = mesh.submit(long_run)
        sampling = cluster_until(mesh, lambda view: any(j["max"] == 1000 and j["value"] > 0
                                                        for j in view["running"]))["running"][0]
        mesh.http.post(f"/v1/jobs/{sampler}/cancel")
        assert mesh.wait(sampler)["status"] == "cancelled"
        running = mesh.submit(hanging())
        cluster_until(mesh, lambda view: [j["node_id"] for j in view["running"]] == ["5"])
        queued = mesh.submit(hanging())
        yield Busy(mesh, running, queued, failed, completed, sampling)
        for job_id in (queued, running):
            mesh.http.post(f"/v1/jobs/{job_id}/cancel")
    finally:
        mesh.stop()


def test_the_cluster_api_shows_queue_running_replicas_models_and_failures(busy: Busy) -> None:
    mesh = busy.mesh
    view = cluster_until(mesh, lambda view: view["queued"] == 1)
    [job] = view["running"]
    [orchestrator] = view["orchestrators"]
    assert job["job_id"] == busy.running and job["orchestrator"] == orchestrator["name"]
    assert (job["node_id"], job["class_type"]) == ("5", HANGING) and job["started"]
    assert job["nodes_total"] == 6 and job["nodes_done"] == 4  # nodes 1-4 done, 5 running, 6 waits for it
    replicas = {r["address"]: r for r in orchestrator["replicas"]}
    assert set(replicas) == {*mesh.env["COMFYMESH_IMAGING_REPLICAS"].split(","),
                             *mesh.env["COMFYMESH_DIFFUSION_REPLICAS"].split(",")}
    assert all(r["healthy"] for r in replicas.values())
    [imaging] = [r for r in replicas.values() if r["stage"] == "imaging"]
    assert imaging["in_flight"] == 1 and imaging["slots"] >= 1  # the hanging job's call holds a slot
    [diffusion] = [r for r in replicas.values() if r["stage"] == "diffusion"]
    assert diffusion["models"] == [CHECKPOINT] and diffusion["in_flight"] == 0 and diffusion["device"] == "cpu"
    assert 0 < diffusion["memory_used_bytes"] <= diffusion["memory_budget_bytes"]
    assert 0 < diffusion["device_free_bytes"] <= diffusion["device_total_bytes"]
    [failure] = view["failures"]
    assert failure["job_id"] == busy.failed and failure["node_id"] == "4"
    assert failure["node_type"] == "CheckpointLoaderSimple" and failure["message"]
    documented = mesh.http.get("/v1/openapi.json").json()
    assert documented["paths"]["/v1/cluster"]["get"]["responses"]["200"]["content"]["application/json"][
        "schema"] == {"$ref": "#/components/schemas/ClusterView"}


def test_a_running_sampler_shows_its_steps(busy: Busy) -> None:
    assert (busy.sampling["node_id"], busy.sampling["class_type"]) == ("3", "KSampler")
    assert 0 < busy.sampling["value"] <= busy.sampling["max"] == 1000
    # the loader, prompts and latent come from the first run's cache: the sampler, decode and save are left
    assert (busy.sampling["nodes_done"], busy.sampling["nodes_total"]) == (0, 3)


def test_each_finished_job_leaves_one_log_line_with_its_time_per_stage(busy: Busy) -> None:
    lines = [json.loads(line.split(": ", 1)[1]) for line in busy.mesh.logs
             if line.startswith("orchestrator: {") and '"status": "' in line]
    [done] = [entry for entry in lines if entry.get("job") == busy.completed]
    assert done["msg"].startswith(f"job {busy.completed} completed in ") and done["status"] == "completed"
    assert done["diffusion_s"] > 0 and done["run_s"] >= done["diffusion_s"] and done["queued_s"] >= 0
    [failed] = [entry for entry in lines if entry.get("job") == busy.failed and "msg" in entry
                and entry["msg"].startswith(f"job {busy.failed} failed")]
    assert failed["node"] == "4" and "at node 4 (CheckpointLoaderSimple)" in failed["msg"]


def test_comfymesh_status_once_prints_the_same_view(busy: Busy) -> None:
    mesh = busy.mesh
    cluster_until(mesh, lambda view: view["queued"] == 1)
    result = subprocess.run([sys.executable, "-m", "comfymesh.cli.main", "status", "--once", "--url", mesh.url],
                            capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "250"})
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "orchestrator ready, every stage healthy" in text and "queued: 1, running: 1" in text, text
    assert busy.running in text and f"5 {HANGING}" in text and "4/6" in text
    [imaging] = [line for line in text.splitlines() if mesh.env["COMFYMESH_IMAGING_REPLICAS"] in line]
    assert "imaging" in imaging and "healthy" in imaging and " 1/" in imaging, text  # the hanging job's slot
    assert mesh.env["COMFYMESH_DIFFUSION_REPLICAS"] in text and CHECKPOINT in text
    assert busy.failed in text and "4 CheckpointLoaderSimple" in text
    helped = subprocess.run([sys.executable, "-m", "comfymesh.cli.main", "status", "--help"], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert helped.returncode == 0 and "--once" in helped.stdout and "--url" in helped.stdout


def test_comfymesh_status_is_live_on_a_terminal_until_ctrl_c(busy: Busy) -> None:
    primary, secondary = os.openpty()
    process = subprocess.Popen([sys.executable, "-m", "comfymesh.cli.main", "status", "--interval", "0.2", "--url",
                                busy.mesh.url], stdin=secondary, stdout=secondary, stderr=secondary,
                               env={**os.environ, "COLUMNS": "250", "TERM": "xterm"}, preexec_fn=sigint_default)
    os.close(secondary)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        # redrawn: the running job is drawn again after the first frame (rich moves the cursor back up)
        while seen.count(busy.running.encode()) < 2 and time.monotonic() < deadline:
            seen += os.read(primary, 65536)
        assert seen.count(busy.running.encode()) >= 2, seen.decode(errors="replace")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        os.close(primary)


def test_the_cluster_page_shows_the_same_view_live(busy: Busy) -> None:
    mesh = busy.mesh
    with chromium_page() as (page, errors):
        page.goto(f"{mesh.url}/ui/cluster")
        page.wait_for_selector('#queue[data-queued="1"]', timeout=30_000)
        page.wait_for_selector(f'#running tr[data-job="{busy.running}"]', timeout=30_000)
        row = page.inner_text(f'#running tr[data-job="{busy.running}"]')
        assert HANGING in row and "4/6" in row
        for address in (*mesh.env["COMFYMESH_IMAGING_REPLICAS"].split(","),
                        *mesh.env["COMFYMESH_DIFFUSION_REPLICAS"].split(",")):
            replica = page.inner_text(f'table.replicas tr[data-address="{address}"]')
            assert "healthy" in replica, replica
        diffusion = page.inner_text(f'table.replicas tr[data-address="{mesh.env["COMFYMESH_DIFFUSION_REPLICAS"]}"]')
        assert CHECKPOINT in diffusion and "free of" in diffusion
        failure = page.inner_text(f'#failures tr[data-job="{busy.failed}"]')
        assert "CheckpointLoaderSimple" in failure
        # live: the page follows the cluster as it changes (the queued job is cancelled, the count drops)
        mesh.http.post(f"/v1/jobs/{busy.queued}/cancel")
        page.wait_for_selector('#queue[data-queued="0"]', timeout=30_000)
        assert errors == []


def test_each_orchestrator_of_a_dns_name_is_shown_with_its_health(tmp_path: Path) -> None:
    """A gateway given `dns:///name:port` asks every address of the name: here `localhost` stands for 127.0.0.1
    and 127.0.0.2 (COMFYMESH_HOSTS_FILE; gRPC's own resolver still takes the gateway's other calls to 127.0.0.1),
    an orchestrator on each, then the second one killed."""
    mesh = Mesh(tmp_path)
    port = mesh.env["COMFYMESH_ORCHESTRATOR"].rsplit(":", 1)[1]
    (tmp_path / "hosts").write_text("127.0.0.1 localhost\n127.0.0.2 localhost\n")
    mesh.env.update(COMFYMESH_ORCHESTRATOR=f"dns:///localhost:{port}", COMFYMESH_HOSTS_FILE=str(tmp_path / "hosts"))
    second = Supervisor([ServiceSpec("orchestrator2", ["comfymesh.orchestrator", "--listen", f"127.0.0.2:{port}"])],
                        mesh.env, lambda name, line: mesh.logs.append(f"{name}: {line}"))
    try:
        mesh.start()
        second.start_all(timeout=120)
        view = cluster_until(mesh, lambda view: [o["healthy"] for o in view["orchestrators"]] == [True, True])
        first, other = view["orchestrators"]
        assert (first["address"], other["address"]) == (f"127.0.0.1:{port}", f"127.0.0.2:{port}")
        assert first["name"] != other["name"] and first["replicas"] and other["replicas"]
        second.stop(grace=5)
        view = cluster_until(mesh, lambda view: not view["orchestrators"][1]["healthy"])
        up, down = view["orchestrators"]
        assert (up["address"], up["healthy"]) == (f"127.0.0.1:{port}", True) and up["name"] and up["replicas"]
        assert (down["address"], down["healthy"], down["replicas"]) == (f"127.0.0.2:{port}", False, [])
        status = subprocess.run([sys.executable, "-m", "comfymesh.cli.main", "status", "--once", "--url", mesh.url],
                                capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "250"})
        assert status.returncode == 0, status.stderr
        assert f"orchestrator down at 127.0.0.2:{port}" in status.stdout and up["name"] in status.stdout
    finally:
        second.stop(grace=5)
        mesh.stop()
