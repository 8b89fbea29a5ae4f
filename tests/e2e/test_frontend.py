"""The official ComfyUI frontend (1.58.1) in headless chromium against a real mesh, from a fresh profile.

First launch: the page loads without an error dialog, opens the template browser with our templates,
the node library lists our nodes; picking our template and pressing Run streams progress over the
websocket and shows the SaveImage node's output image.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.mesh import REPO, SHARED, Mesh

playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "test-artifacts" / "frontend"
TEMPLATE_TITLE = "Imaging pipeline (no model)"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("home")
    mesh = Mesh(home, stages=("imaging",))
    shutil.copy(SHARED / "data" / "astronaut.png", home / "input" / "example.png")
    try:
        yield mesh.start()
    finally:
        mesh.stop()


@pytest.mark.browser
def test_first_launch_runs_our_template_and_shows_the_output(mesh: Mesh, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make system-deps` (apt-get install chromium)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    frames: list[dict[str, Any]] = []
    views: list[str] = []
    errors: list[str] = []
    with playwright.sync_playwright() as driver:
        context = driver.chromium.launch_persistent_context(
            user_data_dir=str(tmp_path / "profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900})
        try:
            page = context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("websocket", lambda ws: ws.on(
                "framereceived", lambda f: frames.append(json.loads(f)) if isinstance(f, str) else None))
            page.on("response", lambda r: views.append(r.url) if "/api/view?" in r.url and r.ok else None)
            page.goto(mesh.url + "/")

            # first launch: the template browser opens and offers our templates
            template = page.get_by_text(TEMPLATE_TITLE).first
            template.wait_for(timeout=30_000)
            assert page.get_by_text("SD1.5 text to image").first.is_visible()
            page.screenshot(path=str(ARTIFACTS / "1-templates.png"))
            template.click()
            page.get_by_text("comfymesh-imaging").first.wait_for(timeout=10_000)

            # the node library lists our node definitions
            page.keyboard.press("n")
            search = page.get_by_placeholder("Search Nodes...").first
            search.fill("Invert Image")
            page.get_by_text("Invert Image").first.wait_for(timeout=10_000)
            page.screenshot(path=str(ARTIFACTS / "2-node-library.png"))

            page.get_by_role("button", name="Run").first.click()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not any(
                    f["type"] == "executing" and f["data"].get("node") is None for f in frames):
                page.wait_for_timeout(200)
            page.wait_for_timeout(1500)  # the output image is fetched and drawn after `executed`
            page.screenshot(path=str(ARTIFACTS / "3-after-run.png"))
        finally:
            context.close()

    assert not errors, errors
    kinds = [f["type"] for f in frames]
    assert "execution_start" in kinds and "execution_success" in kinds, kinds
    running = [f["data"]["node"] for f in frames if f["type"] == "executing" and f["data"].get("node")]
    assert running == ["1", "2", "3", "4", "5", "6"], running
    assert any(f["type"] == "progress_state" for f in frames)
    executed = next(f["data"] for f in frames if f["type"] == "executed")
    image = executed["output"]["images"][0]
    assert executed["node"] == "6" and image["type"] == "output"
    # the page fetched exactly that image to show in the SaveImage node
    assert any(f"filename={image['filename']}" in url and "type=output" in url for url in views), views
    job = mesh.http.get("/api/jobs?status=completed").json()["jobs"][0]
    assert job["preview_output"]["filename"] == image["filename"]
    assert job["workflow_id"]  # the frontend sent the UI workflow in extra_pnginfo
