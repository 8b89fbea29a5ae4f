"""`comfymesh run graph.json`: submit, follow with a progress bar, save the outputs; errors exit non-zero."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.mesh import SHARED, Mesh


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "comfymesh.cli.main", "run", *args], capture_output=True,
                          text=True, timeout=120)


def test_run_saves_the_outputs(imaging_mesh: Mesh, tmp_path: Path) -> None:
    workflow = tmp_path / "graph.json"
    prompt = json.loads((SHARED / "workflows" / "imaging_pipeline.json").read_text())
    prompt["6"]["inputs"]["filename_prefix"] = "cli_run"
    workflow.write_text(json.dumps(prompt))
    result = run_cli(str(workflow), "--url", imaging_mesh.url, "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    [saved] = list((tmp_path / "out").glob("cli_run_*.png"))
    assert Image.open(saved).size == (256, 256)
    assert f"saved {saved}" in result.stderr.replace("\n", "")


def test_run_reports_rejections_and_unreachable_gateways(imaging_mesh: Mesh, tmp_path: Path) -> None:
    workflow = tmp_path / "bad.json"
    workflow.write_text(json.dumps({"1": {"class_type": "Nope", "inputs": {}}}))
    rejected = run_cli(str(workflow), "--url", imaging_mesh.url)
    assert rejected.returncode == 1 and "invalid_prompt" in rejected.stderr
    unreachable = run_cli(str(workflow), "--url", "http://127.0.0.1:9")
    assert unreachable.returncode == 1 and "comfymesh up" in unreachable.stderr
    assert run_cli("--help").returncode == 0
