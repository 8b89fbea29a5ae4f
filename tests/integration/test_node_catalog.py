"""The node catalog as the stages declare it: `/object_info` unchanged for the built-in nodes (a golden
file made before nodes declared themselves), a plugin package's node served and run, broken plugins
named at start-up while their stage serves everything else."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.mesh import REPO, SHARED, Mesh

GOLDEN = REPO / "tests" / "golden" / "object_info.json"
PLUGINS = REPO / "tests" / "plugins"


def install_plugins(target: Path) -> None:
    """pip-install the example and the broken plugin packages into `target` (no index, no build isolation),
    built from copies so the build leaves nothing in the repository."""
    sources = target.parent / f"{target.name}-src"
    for name in ("example_plugin", "broken_plugin"):
        shutil.copytree(PLUGINS / name, sources / name)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(target), str(sources / "example_plugin"), str(sources / "broken_plugin")],
                   check=True, capture_output=True)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    site = tmp_path_factory.mktemp("plugins")
    install_plugins(site)
    home = tmp_path_factory.mktemp("catalog-home")
    mesh = Mesh(home, stages=("imaging", "diffusion"), env={"PYTHONPATH": str(site)})
    # the files the golden file's lists were made with
    shutil.copy(SHARED / "data" / "astronaut.png", home / "input" / "example.png")
    for folder, name in (("checkpoints", "tiny"), ("loras", "l"), ("vae", "v")):
        (home / "models" / folder / f"{name}.safetensors").write_bytes(b"x")
    try:
        yield mesh.start()
    finally:
        mesh.stop()


def test_object_info_of_the_built_in_nodes_is_unchanged(mesh: Mesh) -> None:
    golden = json.loads(GOLDEN.read_text())
    golden.pop("_about")  # where the entries come from, what differed when they were checked
    served = mesh.http.get("/object_info").json()
    assert {name: served[name] for name in golden} == golden
    # the plugin's, and nothing else but the nodes added since (each checked against its own golden table)
    later: dict[str, object] = {}
    for table in sorted(GOLDEN.parent.glob("*_object_info.json")):  # one table per group of nodes added since,
        later |= json.loads(table.read_text())  # each checked entry for entry by its own unit test
    assert set(served) - set(golden) - set(later) == {"ExampleSolarize"}


def test_a_plugin_node_is_declared_and_runs_through_the_mesh(mesh: Mesh) -> None:
    entry = mesh.http.get("/object_info/ExampleSolarize").json()["ExampleSolarize"]
    assert entry["input"]["required"]["threshold"] == ["FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01}]
    assert entry["category"] == "image/example"
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 8, "batch_size": 1,
                                                           "color": 0xFF4000}},
              "2": {"class_type": "ExampleSolarize", "inputs": {"image": ["1", 0], "threshold": 0.5}},
              "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "solar"}}}
    reply = mesh.http.post("/prompt", json={"prompt": prompt})
    assert reply.status_code == 200, reply.text
    job = mesh.wait(reply.json()["prompt_id"])
    assert job["status"] == "completed", job["error"]
    png = mesh.http.get(f"/v1/jobs/{job['job_id']}/output", params={"index": 0}).content
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert pixels.shape == (8, 16, 3)
    assert (pixels == [0, 64, 0]).all()  # 255 -> 0 (above the threshold), 64 and 0 kept


def test_a_prompt_with_a_bad_plugin_input_is_refused_like_any_node(mesh: Mesh) -> None:
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
              "2": {"class_type": "ExampleSolarize", "inputs": {"image": ["1", 0], "threshold": 3.0}},
              "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}}}
    reply = mesh.http.post("/prompt", json={"prompt": prompt})
    assert reply.status_code == 400
    assert reply.json()["node_errors"]["2"]["errors"][0]["type"] == "value_bigger_than_max"


def test_broken_plugins_are_named_at_start_up_and_the_stage_serves_the_rest(mesh: Mesh) -> None:
    logs = "\n".join(line for line in mesh.logs if line.startswith("imaging"))
    assert re.search(r"broken_import \(comfymesh_broken_plugin\.missing_dependency:nodes\) was not loaded: "
                     r"ModuleNotFoundError: No module named 'comfymesh_no_such_dependency'", logs)
    assert re.search(r"broken_declaration .* was not loaded: DeclarationError: node 'BrokenTwice' declares "
                     r"input 'x' twice", logs)
    served = mesh.http.get("/object_info").json()
    assert "BrokenTwice" not in served
    assert {"LoadImage", "ImageScale", "ExampleSolarize"} <= set(served)
