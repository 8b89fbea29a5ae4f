"""`make`'s torch build choice (deploy/torch_build.sh) from what `nvidia-smi` reports, and the GPU compose
override that reserves a GPU for the diffusion service. The script runs for real; `nvidia-smi` is a stand-in
printing a driver header, since this machine has no GPU."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "torch_build.sh"


def choose(mode: str, tmp_path: Path, cuda: str | None) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    if cuda is None:
        smi.unlink(missing_ok=True)
    else:
        smi.write_text(f"#!/bin/sh\necho '| NVIDIA-SMI 580.1   Driver Version: 580.1   CUDA Version: {cuda}     |'\n")
        smi.chmod(0o755)
    return subprocess.run(["sh", str(SCRIPT), mode], capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"})


@pytest.mark.parametrize(("cuda", "build"), [("13.0", "cu130"), ("12.9", "cu128"), ("12.8", "cu128"),
                                             ("12.6", "cu126"), ("12.2", "cpu"), (None, "cpu")])
def test_auto_takes_the_newest_build_the_driver_runs(cuda: str | None, build: str, tmp_path: Path) -> None:
    result = choose("auto", tmp_path, cuda)
    assert result.returncode == 0 and result.stdout.strip() == build, result.stderr


def test_explicit_choices(tmp_path: Path) -> None:
    assert choose("cpu", tmp_path, "12.8").stdout.strip() == "cpu"
    missing = choose("cuda", tmp_path, None)
    assert missing.returncode == 1 and "nvidia-smi" in missing.stderr
    old = choose("cuda", tmp_path, "11.8")
    assert old.returncode == 1 and "update the driver" in old.stderr
    assert choose("rocm", tmp_path, None).returncode == 2


def test_the_gpu_override_reserves_a_gpu_for_diffusion_only() -> None:
    override = yaml.safe_load((REPO / "docker-compose.gpu.yml").read_text())["services"]
    assert set(override) == {"diffusion"}
    [device] = override["diffusion"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "TORCH_BUILD" in override["diffusion"]["build"]["args"]
    assert "ARG TORCH_BUILD=cpu" in (REPO / "deploy" / "diffusion.Dockerfile").read_text()
