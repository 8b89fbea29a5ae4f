"""ComfyUI's execution semantics through a real imaging mesh: the switch runs only the branch it takes (the
other holds a node that would hang, and never shows in the job's events), a list node makes SaveImage save
every item, and an ExecutionBlocker (from a node plugin) leaves its branch unsaved while the job completes."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.mesh import Mesh

# a node plugin found through its entry point (a dist-info folder on PYTHONPATH): an image passed on, or a
# blocker in its place
PLUGIN = '''
from comfymesh.catalog.schema import Boolean, Link, NodeSet, Output
from comfymesh.contracts.values import ExecutionBlocker

nodes = NodeSet("imaging")


@nodes.define("TestBlockImage", category="testing", inputs=[Link("image", "IMAGE"), Boolean("block", False)],
              outputs=[Output("IMAGE")])
def block_image(ctx, image, block):
    return (ExecutionBlocker(None) if block else image,)
'''


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    site = tmp_path_factory.mktemp("site")
    (site / "blocker_plugin.py").write_text(PLUGIN)
    info = site / "blocker_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: blocker-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[comfymesh.nodes]\nblocker = blocker_plugin:nodes\n")
    home = tmp_path_factory.mktemp("semantics-home")
    # ImageBlur hangs until cancelled: a branch holding one must never run
    mesh = Mesh(home, env={"PYTHONPATH": str(site), "COMFYMESH_TEST_HANG_NODES": "ImageBlur"})
    try:
        yield mesh.start()
    finally:
        mesh.stop()


def empty(color: int, batch: int = 1) -> dict[str, Any]:
    return {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 4, "batch_size": batch, "color": color}}


def run(mesh: Mesh, prompt: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    job_id = mesh.submit(prompt)
    job = mesh.wait(job_id, timeout=60)
    return job, mesh.events(f"/v1/jobs/{job_id}/events")


def saved(mesh: Mesh, job: dict[str, Any]) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(mesh.http.get(f"/v1/jobs/{job['job_id']}/output",
                                                           params={"index": index}).content)).convert("RGB"))
            for index in range(len(job["images"]))]


def ran(events: list[dict[str, Any]]) -> set[str]:
    return {e["data"]["node_id"] for e in events if e["event"] == "node_running"}


@pytest.mark.parametrize("take", [True, False])
def test_the_switch_runs_only_the_branch_it_takes(mesh: Mesh, take: bool) -> None:
    prompt = {
        "1": {"class_type": "PrimitiveBoolean", "inputs": {"value": take}},
        "2": empty(0xFF0000),  # the true branch: red
        "3": empty(0x0000FF),  # the false branch: blue
        "4": {"class_type": "ImageBlur", "inputs": {"image": ["2" if not take else "3", 0], "blur_radius": 1,
                                                    "sigma": 1.0}},
        # the branch not taken holds the hanging blur; the one taken goes straight in
        "5": {"class_type": "ComfySwitchNode", "inputs": {"switch": ["1", 0],
                                                          "on_true": ["2", 0] if take else ["4", 0],
                                                          "on_false": ["4", 0] if take else ["3", 0]}},
        "6": {"class_type": "ImageInvert", "inputs": {"image": ["5", 0]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "switch"}},
    }
    job, events = run(mesh, prompt)
    assert job["status"] == "completed", job["error"]
    untaken = {"4", "3"} if take else {"4", "2"}
    assert ran(events) == {"1", "5", "6", "7", "2" if take else "3"}
    assert not ran(events) & untaken
    assert events[-1]["event"] == "completed"
    (pixels,) = saved(mesh, job)
    assert pixels.shape == (4, 8, 3)
    assert (pixels == ([0, 255, 255] if take else [255, 255, 0])).all()  # inverted red / inverted blue


def test_a_list_node_makes_save_image_save_every_item(mesh: Mesh) -> None:
    prompt = {
        "1": empty(0x204060, batch=5),
        "2": {"class_type": "RebatchImages", "inputs": {"images": ["1", 0], "batch_size": 2}},
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},  # runs once per batch: 2, 2, 1
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "listed"}},
    }
    job, events = run(mesh, prompt)
    assert job["status"] == "completed", job["error"]
    assert len(job["images"]) == 5 and len({image["filename"] for image in job["images"]}) == 5
    for pixels in saved(mesh, job):
        assert (pixels == [255 - 0x20, 255 - 0x40, 255 - 0x60]).all()
    files = sorted(path.name for path in (mesh.home / "output").glob("listed_*.png"))
    assert len(files) == 5
    # three calls of the invert are one node's run for the job's events
    assert [e["event"] for e in events if e["data"].get("node_id") == "3"] == ["node_running", "node_done"]


@pytest.mark.parametrize("through_switch", [False, True])
def test_a_blocked_branch_saves_nothing_and_the_job_completes(mesh: Mesh, through_switch: bool) -> None:
    prefix = f"blocked{int(through_switch)}"

    def prompt(block: bool) -> dict[str, Any]:
        nodes: dict[str, Any] = {
            "1": empty(0xFFFFFF),
            "2": {"class_type": "TestBlockImage", "inputs": {"image": ["1", 0], "block": block}},
            "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
            "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": prefix}},
        }
        if through_switch:  # the blocker crosses the orchestrator (a wire value) and back to a stage
            nodes["5"] = {"class_type": "ComfySwitchNode", "inputs": {"switch": True, "on_true": ["2", 0],
                                                                      "on_false": ["1", 0]}}
            nodes["3"]["inputs"]["image"] = ["5", 0]
        return nodes

    job, events = run(mesh, prompt(block=True))
    assert job["status"] == "completed", job["error"]
    assert job["images"] == []
    assert not list((mesh.home / "output").glob(f"{prefix}_*.png"))
    assert events[-1]["event"] == "completed"
    # the same graph unblocked saves its image: the blocker, not the graph, kept it back
    job, _ = run(mesh, prompt(block=False))
    assert job["status"] == "completed", job["error"]
    (pixels,) = saved(mesh, job)
    assert (pixels == 0).all()


def test_the_switch_is_served_as_comfyui_declares_it(mesh: Mesh) -> None:
    entry = mesh.http.get("/object_info/ComfySwitchNode").json()["ComfySwitchNode"]
    # both branches are required (ComfyUI 0.8.0 refuses a switch with one unlinked) and lazy
    assert entry["input"]["required"]["on_true"][1]["lazy"] is True and "optional" not in entry["input"]
    assert entry["category"] == "logic" and entry["output_matchtypes"] == ["switch"]
    assert "stage" not in entry


def test_a_switch_with_a_branch_unlinked_is_refused_before_it_runs(mesh: Mesh) -> None:
    prompt = {"1": empty(0xFFFFFF),
              "2": {"class_type": "ComfySwitchNode", "inputs": {"switch": True, "on_true": ["1", 0]}},
              "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "one_branch"}}}
    reply = mesh.http.post("/prompt", json={"prompt": prompt})
    assert reply.status_code == 400
    errors = reply.json()["node_errors"]["2"]["errors"]
    assert [(e["type"], e["extra_info"]["input_name"]) for e in errors] == [("required_input_missing", "on_false")]
