"""The first run: on a fresh data folder, `comfymesh demo` writes the tiny models and the input image, and every
template in ui/templates/ then runs from the CLI by name, with no edits; the official templates of the newer
families find their files too (run from the CLI at a CPU-sized latent)."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from PIL import Image

from tests.mesh import REPO, Mesh

TEMPLATES = sorted(path.stem for path in (REPO / "ui" / "templates").glob("*.json") if path.name != "index.json")


@pytest.fixture
def mesh(demo_mesh: Mesh) -> Mesh:
    return demo_mesh  # tests/conftest.py: `comfymesh demo` on a fresh data folder, then the mesh


@pytest.mark.parametrize("name", TEMPLATES)
def test_every_template_runs_after_demo(name: str, mesh: Mesh, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "comfymesh.cli.main", "run", name, "--url", mesh.url,
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    saved = sorted(tmp_path.glob("*.png"))
    assert saved, result.stderr
    for path in saved:
        assert min(Image.open(path).size) >= 64


# official template → the --set overrides a CPU user gives (64² latent, two steps)
OFFICIAL = {
    "image_z_image_turbo": ["EmptySD3LatentImage.width=64", "EmptySD3LatentImage.height=64", "KSampler.steps=2"],
    "flux_schnell": ["EmptySD3LatentImage.width=64", "EmptySD3LatentImage.height=64", "KSampler.steps=2"],
    "sd3.5_simple_example": ["EmptySD3LatentImage.width=64", "EmptySD3LatentImage.height=64", "KSampler.steps=2"],
    "image_chroma_text_to_image": ["EmptySD3LatentImage.width=64", "EmptySD3LatentImage.height=64",
                                   "BasicScheduler.steps=2"],
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_templates_find_the_demo_files(name: str, mesh: Mesh, tmp_path: Path) -> None:
    workflow = tmp_path / f"{name}.json"
    workflow.write_text(resources.files("comfyui_workflow_templates_json").joinpath("templates", f"{name}.json")
                        .read_text())
    sets = [arg for assignment in OFFICIAL[name] for arg in ("--set", assignment)]
    result = subprocess.run([sys.executable, "-m", "comfymesh.cli.main", "run", str(workflow), *sets, "--url",
                             mesh.url, "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    [saved] = sorted((tmp_path / "out").glob("*.png"))
    assert Image.open(saved).size == (64, 64)
