"""The official ComfyUI frontend (1.58.1) in headless chromium against a real mesh, from a fresh profile.

First launch: the page loads without an error dialog, opens the template browser with our templates,
the node library lists our nodes; picking our SD1.5 template (a tiny random-weight checkpoint stands in
for sd15.safetensors), shrinking it to a CPU-friendly size through the page's graph API, and pressing Run
streams progress over the websocket, moves the progress shown in the page, and shows the SaveImage
node's output image. Screenshots go to test-artifacts/frontend/.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.chromium import SHRINK, WINDOW, chromium_page, record_frames, saved_images, screenshots
from tests.mesh import SHARED, Mesh

TEMPLATE_TITLE = "SD1.5 text to image"
CHECKPOINT = "sd15.safetensors"  # the name ui/templates/comfymesh-sd15-txt2img.json loads
STEPS = 4
# Every title the page shows while it runs: the frontend puts the running job's progress there.
WATCH_TITLE = """() => {
    window.__titles = [];
    new MutationObserver(() => window.__titles.push(document.title))
        .observe(document.querySelector("title"), {childList: true, characterData: true, subtree: true});
}"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("home")
    mesh = Mesh(home, stages=("imaging", "diffusion"))
    subprocess.run([sys.executable, "-m", "comfymesh.diffusion.models.tiny_checkpoint", "--family", "sd15",
                    str(home / "models" / "checkpoints" / CHECKPOINT)], check=True, capture_output=True)
    shutil.copy(SHARED / "data" / "astronaut.png", home / "input" / "example.png")
    try:
        yield mesh.start()
    finally:
        mesh.stop()


@pytest.mark.browser
def test_first_launch_runs_our_sd15_template_and_shows_the_output(mesh: Mesh, tmp_path: Path) -> None:
    artifacts = screenshots("frontend")
    views: list[str] = []
    with chromium_page(tmp_path / "profile", WINDOW) as (page, errors):
        frames = record_frames(page)
        page.on("response", lambda r: views.append(r.url) if "/api/view?" in r.url and r.ok else None)
        page.goto(mesh.url + "/")

        # first launch: the template browser opens and offers our templates, and no error dialog shows
        template = page.get_by_text(TEMPLATE_TITLE).first
        template.wait_for(timeout=30_000)
        assert page.get_by_text("Imaging pipeline (no model)").first.is_visible()
        assert page.locator(".p-dialog").filter(has_text=re.compile("error", re.IGNORECASE)).count() == 0
        page.screenshot(path=str(artifacts / "1-templates.png"))
        template.click()
        page.get_by_text("comfymesh-sd15-txt2img").first.wait_for(timeout=10_000)

        # the node library lists our node definitions
        page.keyboard.press("n")
        search = page.get_by_placeholder("Search Nodes...").first
        search.fill("Invert Image")
        page.get_by_text("Invert Image").first.wait_for(timeout=10_000)
        page.screenshot(path=str(artifacts / "2-node-library.png"))

        checkpoint = page.evaluate("""() => window.app.graph.nodes.find((n) => n.type === "CheckpointLoaderSimple")
            .widgets.find((w) => w.name === "ckpt_name").options.values""")
        assert CHECKPOINT in checkpoint, checkpoint  # the combo offers the file the template names
        edited = page.evaluate(SHRINK, ["EmptyLatentImage", STEPS])
        assert sorted(edited) == ["EmptyLatentImage.height=64", "EmptyLatentImage.width=64",
                                  f"KSampler.steps={STEPS}"], edited
        page.evaluate(WATCH_TITLE)

        page.get_by_role("button", name="Run").first.click()
        deadline, running = time.monotonic() + 45, False
        while time.monotonic() < deadline and not any(
                f["type"] == "executing" and f["data"].get("node") is None for f in frames):
            if not running and any(f["type"] == "progress" for f in frames):
                running = True
                page.screenshot(path=str(artifacts / "3-sampling.png"))
            page.wait_for_timeout(100)
        shown = saved_images(page, 10_000)
        titles = page.evaluate("() => window.__titles")
        page.screenshot(path=str(artifacts / "4-after-run.png"))

    assert not errors, errors
    kinds = [f["type"] for f in frames]
    assert "execution_start" in kinds and "execution_success" in kinds, kinds
    # the KSampler reported every step, and the page showed the progress moving
    steps = [f["data"]["value"] for f in frames if f["type"] == "progress" and f["data"]["node"] == "3"]
    assert steps == list(range(1, STEPS + 1)), steps
    percents = [int(m.group(1)) for t in titles if (m := re.match(r"\[(\d+)%\]", t))]
    assert len(set(percents)) >= 2 and percents == sorted(percents), titles
    executed = next(f["data"] for f in frames if f["type"] == "executed")
    image = executed["output"]["images"][0]
    assert executed["node"] == "9" and image["type"] == "output"
    # the page fetched exactly that image and drew it in the SaveImage node
    assert any(f"filename={image['filename']}" in url and "type=output" in url for url in views), views
    assert shown and image["filename"] in shown[0], shown
    job = mesh.http.get("/api/jobs?status=completed").json()["jobs"][0]
    assert job["preview_output"]["filename"] == image["filename"]
    assert job["workflow_id"]  # the frontend sent the UI workflow in extra_pnginfo
