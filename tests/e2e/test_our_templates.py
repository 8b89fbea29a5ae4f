"""Our templates (ui/templates/) in the official frontend, after a fresh `comfymesh demo`: each one is loaded into
the page as the template browser loads it, run with the Run button, unedited, and its SaveImage node shows the
output. The CLI side of the same promise is tests/integration/test_cli_demo.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.e2e.chromium import WINDOW, chromium_page, open_app, record_frames, saved_images, skip_template_browser
from tests.mesh import REPO, Mesh

TEMPLATES = sorted(path for path in (REPO / "ui" / "templates").glob("*.json") if path.name != "index.json")
LOAD = "async (workflow) => { await window.app.loadGraphData(workflow, true, false); }"


@pytest.fixture
def mesh(demo_mesh: Mesh) -> Mesh:
    skip_template_browser(demo_mesh)  # the page opens on its default graph; the template is loaded into it
    return demo_mesh  # tests/conftest.py: `comfymesh demo` on a fresh data folder, then the mesh


@pytest.mark.browser
@pytest.mark.timeout(900)  # the hires-fix template runs unedited: 512² then 768² on a CPU
@pytest.mark.parametrize("template", TEMPLATES, ids=lambda path: path.stem)
def test_our_template_runs_unedited_in_the_frontend(template: Path, mesh: Mesh, tmp_path: Path) -> None:
    with chromium_page(tmp_path / "profile", WINDOW) as (page, errors):
        frames = record_frames(page)
        open_app(page, mesh)
        page.evaluate(LOAD, json.loads(template.read_text()))
        page.evaluate("() => window.app.canvas.centerOnNode(window.app.graph.nodes.find("
                      "(n) => n.type === 'SaveImage'))")  # a node off screen is not drawn, nor its image loaded
        page.get_by_role("button", name="Run", exact=True).first.click()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not any(
                f["type"] in ("execution_success", "execution_error") for f in frames):
            page.wait_for_timeout(100)
        shown = saved_images(page, 10_000)
    assert not errors, errors
    kinds = [f["type"] for f in frames]
    assert "execution_success" in kinds, [f for f in frames if f["type"] == "execution_error"] or kinds
    images = [image for f in frames if f["type"] == "executed" for image in f["data"]["output"].get("images", [])]
    assert images and all(image["type"] == "output" for image in images), images
    assert shown and any(image["filename"] in shown[0] for image in images), shown
