"""The CLI against a real mesh: `run` with a UI workflow by template name, `--set`, `--image`, Ctrl+C (asked,
or cancelling with --cancel-on-exit), `status`, `jobs`, `cancel`, `logs`, the URL taken from COMFYMESH_PORT,
and refusals printed as sentences with a next step (never JSON)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.mesh import REPO, SHARED, Mesh, sigint_default

HANGING = "ImageCrop"  # the node class this module's mesh hangs until cancelled (COMFYMESH_TEST_HANG_NODES)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("cli-home"), env={"COMFYMESH_TEST_HANG_NODES": HANGING})
    try:
        yield mesh.start()
    finally:
        mesh.stop()


def cli(mesh: Mesh | None, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    url = ["--url", mesh.url] if mesh else []
    return subprocess.run([sys.executable, "-m", "comfymesh.cli.main", *args, *url], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "200", **(env or {})})


def no_json(text: str) -> bool:
    return "{" not in text and '"type"' not in text


def test_run_a_ui_template_by_name_with_an_image_and_overrides(mesh: Mesh, tmp_path: Path) -> None:
    result = cli(mesh, "run", "comfymesh-imaging", "--image", str(SHARED / "data" / "coffee.png"),
                 "--set", "width=64", "--set", "ImageScale.height=48", "--set", "6.filename_prefix=cli_ui",
                 "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    [saved] = list(tmp_path.glob("cli_ui_*.png"))
    assert Image.open(saved).size == (64, 48)
    assert "6/6 nodes" in result.stderr and "None" not in result.stderr
    job_id = json.loads(mesh.http.get("/v1/jobs", params={"limit": 1}).text)["items"][0]["job_id"]
    prompt = mesh.http.get(f"/api/jobs/{job_id}").json()
    assert "coffee" in json.dumps(prompt)  # the uploaded file, not the template's example.png


def test_ambiguous_and_unknown_overrides_are_refused_with_a_way_out(mesh: Mesh) -> None:
    both = cli(mesh, "run", "comfymesh-imaging", "--set", "sigma=2")
    assert both.returncode == 2 and "several nodes" in both.stderr and "--set 3.sigma=2" in both.stderr
    unknown = cli(mesh, "run", "comfymesh-imaging", "--set", "nope=1")
    assert unknown.returncode == 2 and "no node has a value input named 'nope'" in unknown.stderr
    missing = cli(mesh, "run", "no-such-template")
    assert missing.returncode == 2 and "no saved workflow or template of that name" in missing.stderr


def test_a_refused_workflow_reads_as_sentences(mesh: Mesh, tmp_path: Path) -> None:
    workflow = tmp_path / "bad.json"
    workflow.write_text(json.dumps({"1": {"class_type": "LoadImage", "inputs": {"image": "nope.png"}},
                                    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}))
    result = cli(mesh, "run", str(workflow))
    assert result.returncode == 1, result.stderr
    assert "prompt_outputs_failed_validation" in result.stderr and "node 1 (LoadImage) image:" in result.stderr
    assert "node 2 (SaveImage) filename_prefix: Required input is missing" in result.stderr
    assert "comfymesh models list" in result.stderr and no_json(result.stderr)


def _start_hanging_run(mesh: Mesh, tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    prompt = json.loads((SHARED / "workflows" / "imaging_pipeline.json").read_text())
    prompt["1"]["inputs"]["image"] = "example.png"
    prompt["5"] = {"class_type": HANGING, "inputs": {"image": ["4", 0], "width": 64, "height": 64, "x": 0, "y": 0}}
    workflow = tmp_path / "hang.json"
    workflow.write_text(json.dumps(prompt))
    with (SHARED / "data" / "astronaut.png").open("rb") as photo:
        mesh.http.post("/upload/image", files={"image": ("example.png", photo)}, data={"overwrite": "true"})
    before = {job["job_id"] for job in mesh.http.get("/v1/jobs").json()["items"]}
    process = subprocess.Popen([sys.executable, "-m", "comfymesh.cli.main", "run", str(workflow), "--url", mesh.url,
                                *extra], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=sigint_default)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        listed = mesh.http.get("/v1/jobs", params={"status": "running"}).json()["items"]
        jobs = [mesh.http.get(f"/v1/jobs/{job['job_id']}").json() for job in listed if job["job_id"] not in before]
        running = [job for job in jobs
                   if any(n["state"] == "running" and n["class_type"] == HANGING for n in job["nodes"])]
        if running:
            return process, running[0]["job_id"]
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"the job never reached the hanging node: {process.communicate()}")


def test_ctrl_c_cancels_with_cancel_on_exit(mesh: Mesh, tmp_path: Path) -> None:
    process, job_id = _start_hanging_run(mesh, tmp_path, "--cancel-on-exit")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert f"job {job_id}: cancel" in stderr
    assert mesh.wait(job_id, timeout=60)["status"] == "cancelled"


def test_ctrl_c_without_a_terminal_leaves_the_job_and_says_how_to_stop_it(mesh: Mesh, tmp_path: Path) -> None:
    process, job_id = _start_hanging_run(mesh, tmp_path)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and f"comfymesh cancel {job_id}" in stderr.replace("\n", "")
    assert mesh.http.get(f"/v1/jobs/{job_id}").json()["status"] == "running"

    status = cli(mesh, "status", job_id)
    assert status.returncode == 0 and f"job {job_id}: running" in status.stdout and HANGING in status.stdout
    listed = cli(mesh, "jobs", "--status", "running")
    assert job_id in listed.stdout and "running" in listed.stdout
    cancelled = cli(mesh, "cancel", job_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert mesh.wait(job_id, timeout=60)["status"] == "cancelled"
    logs = cli(mesh, "logs", job_id)
    kinds = [line.split()[2] for line in logs.stdout.splitlines() if line.strip()]
    assert kinds[0] == "queued" and kinds[-1] == "cancelled" and "node_running" in kinds, logs.stdout


def test_status_and_the_default_url_from_the_servers_settings(mesh: Mesh) -> None:
    result = cli(None, "status", env={"COMFYMESH_PORT": str(mesh.port)})
    assert result.returncode == 0, result.stderr
    assert f"comfymesh at http://127.0.0.1:{mesh.port}" in result.stdout and "orchestrator ready" in result.stdout
    unknown = cli(mesh, "status", "no-such-job")
    assert unknown.returncode == 1 and "comfymesh jobs" in unknown.stderr and no_json(unknown.stderr)
    down = cli(None, "jobs", env={"COMFYMESH_PORT": "9"})
    assert down.returncode == 1 and "cannot reach comfymesh at http://127.0.0.1:9" in down.stderr


def test_save_list_and_run_a_workflow(mesh: Mesh, tmp_path: Path) -> None:
    template = REPO / "ui" / "templates" / "comfymesh-imaging.json"
    saved = cli(mesh, "workflows", "add", "cli-imaging", str(template), "--input", "2.width", "--input",
                "2.height", "--input", "1.image=photo", "--description", "scale and filter a photo")
    assert saved.returncode == 0, saved.stderr
    assert "width (integer" in saved.stderr and "photo (image" in saved.stderr
    listed = cli(mesh, "workflows", "list")
    assert "cli-imaging" in listed.stdout and "scale and filter a photo" in listed.stdout
    ran = cli(mesh, "workflows", "run", "cli-imaging", "--set", "width=80", "--set", "height=40",
              "--image", f"photo={SHARED / 'data' / 'coffee.png'}", "--out", str(tmp_path))
    assert ran.returncode == 0, ran.stderr
    [image] = list(tmp_path.glob("*.png"))
    assert Image.open(image).size == (80, 40)
    # `run NAME` takes a saved workflow's prompt too, with run's own --set
    again = cli(mesh, "run", "cli-imaging", "--set", "2.width=24", "--set", "6.filename_prefix=again",
                "--image", f"1={SHARED / 'data' / 'coffee.png'}", "--out", str(tmp_path))
    assert again.returncode == 0, again.stderr
    assert Image.open(next(tmp_path.glob("again_*.png"))).size[0] == 24
    refused = cli(mesh, "workflows", "run", "cli-imaging", "--set", "width=-5")
    assert refused.returncode == 1 and "invalid_request" in refused.stderr, refused.stderr
    assert "width" in refused.stderr and no_json(refused.stderr)


@pytest.mark.parametrize("command", [[], ["run"], ["status"], ["jobs"], ["cancel"], ["logs"], ["up"], ["demo"],
                                     ["models"], ["models", "list"], ["models", "pull"], ["workflows"],
                                     ["workflows", "list"], ["workflows", "add"], ["workflows", "run"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = cli(None, *command, "--help")
    assert result.returncode == 0 and "Usage" in result.stdout, result.stderr
