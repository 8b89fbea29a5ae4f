"""Our saved-workflow page (/ui/workflows) in headless chromium against a real imaging mesh: a form per saved
workflow with its typed inputs, a run with an image chosen in the file input (sent as base64) and a number
typed in, live progress from the job's SSE stream, and the results gallery showing the output images."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.e2e.chromium import chromium_page, screenshots
from tests.mesh import SHARED, Mesh

INVERT = {"1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
          "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
          "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "page"}}}
BLANK = {"1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 16, "batch_size": 1, "color": 0}},
         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "blank"}}}
# every text the run's status line shows, in order
WATCH_STATES = """() => {
    window.__states = [];
    for (const output of document.querySelectorAll("form.workflow output")) {
        new MutationObserver(() => window.__states.push(`${output.closest("form").dataset.workflow}: ${output.textContent}`))
            .observe(output, {childList: true, characterData: true, subtree: true});
    }
}"""
GALLERY = """() => [...document.querySelectorAll("#gallery img")]
    .filter((img) => img.complete && img.naturalWidth > 0)
    .map((img) => ({src: img.src, width: img.naturalWidth, height: img.naturalHeight}))"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("page")
    started = Mesh(home)
    shutil.copy(SHARED / "data" / "astronaut.png", home / "input" / "example.png")
    try:
        started.start()
        for name, workflow, inputs in (("invert", INVERT, [{"node_id": "1", "input": "image"}]),
                                       ("blank", BLANK, [{"node_id": "1", "input": "width"},
                                                         {"node_id": "1", "input": "color"}])):
            reply = started.http.put(f"/v1/workflows/{name}", json={"workflow": workflow, "inputs": inputs,
                                                                     "description": f"the {name} workflow"})
            assert reply.status_code == 201, reply.text
        yield started
    finally:
        started.stop()


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.mark.browser
def test_the_page_runs_saved_workflows_with_live_progress_and_a_gallery(mesh: Mesh, tmp_path: Path) -> None:
    artifacts = screenshots("workflow-page")
    streams: list[str] = []
    with chromium_page(viewport={"width": 1200, "height": 900}) as (page, errors):
        page.on("request", lambda r: streams.append(r.url) if r.url.endswith("/events") else None)
        page.goto(mesh.url + "/ui/workflows")
        page.get_by_text("2 saved workflow(s)").wait_for(timeout=15_000)
        invert = page.locator("form[data-workflow=invert]")
        blank = page.locator("form[data-workflow=blank]")
        # the form is typed from the node declarations
        width = blank.locator("input[name=width]")
        assert (width.get_attribute("type"), width.get_attribute("min"), width.input_value()) == ("number", "1", "32")
        assert invert.locator("input[name=image]").get_attribute("type") == "file"
        page.evaluate(WATCH_STATES)

        invert.locator("input[name=image]").set_input_files(str(SHARED / "data" / "coffee.png"))
        invert.get_by_role("button", name="Run").click()
        invert.locator("output", has_text="completed").wait_for(timeout=30_000)
        width.fill("24")
        blank.get_by_role("button", name="Run").click()
        blank.locator("output", has_text="completed").wait_for(timeout=30_000)
        page.wait_for_function("() => document.querySelectorAll('#gallery img').length === 2")
        page.wait_for_function("() => [...document.querySelectorAll('#gallery img')].every((i) => i.complete)")
        shown: list[dict[str, Any]] = page.evaluate(GALLERY)
        states: list[str] = page.evaluate("() => window.__states")
        page.screenshot(path=str(artifacts / "after-runs.png"))

    assert not errors, errors
    assert len(streams) == 2  # each run followed over its job's event stream
    # live progress: the status line moved through the job's events before it completed
    invert_states = [state for state in states if state.startswith("invert: ")]
    assert "invert: running ImageInvert" in invert_states and invert_states[-1] == "invert: completed", states
    newest, oldest = shown  # the gallery shows the newest first
    assert (newest["width"], newest["height"]) == (24, 16)
    coffee = pixels((SHARED / "data" / "coffee.png").read_bytes())
    assert (oldest["width"], oldest["height"]) == (coffee.shape[1], coffee.shape[0])
    assert np.array_equal(pixels(mesh.http.get(oldest["src"]).content), 255 - coffee)
