"""The frontend's own default graph (Z-Image Turbo) in headless chromium against a real mesh, from a fresh
profile with the tutorial marked done, so the page opens straight on that graph (as every browser does after
the first visit). Tiny random-weight files in ComfyUI's layouts stand under the graph's default file names;
the page's graph API shrinks it to 64×64 in 2 steps, Run is pressed, and the SaveImage node shows the output.
Screenshots go to test-artifacts/frontend/.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from comfymesh.diffusion.models.tiny_zimage import make_tiny_zimage
from tests.e2e.test_frontend import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, SAVE_IMAGE_SHOWN
from tests.mesh import Mesh

playwright = pytest.importorskip("playwright.sync_api")

STEPS = 2
DEFAULT_GRAPH_TYPES = {"UNETLoader", "CLIPLoader", "VAELoader", "ModelSamplingAuraFlow", "CLIPTextEncode",
                       "EmptySD3LatentImage", "KSampler", "VAEDecode", "SaveImage"}
SHRINK = """([steps]) => {
    const edited = [];
    for (const node of window.app.graph.nodes) {
        for (const widget of node.widgets ?? []) {
            const size = node.type === "EmptySD3LatentImage" && ["width", "height"].includes(widget.name);
            const sampling = node.type === "KSampler" && widget.name === "steps";
            if (size || sampling) {
                widget.value = size ? 64 : steps;
                widget.callback?.(widget.value);
                edited.push(`${node.type}.${widget.name}=${widget.value}`);
            }
        }
    }
    window.app.graph.setDirtyCanvas(true, true);
    return edited;
}"""
CENTRE_ON_SAVE = """() => {
    window.app.canvas.centerOnNode(window.app.graph.nodes.find((node) => node.type === "SaveImage"));
    window.app.canvas.setDirty(true, true);
}"""
WIDGETS = """() => Object.fromEntries(window.app.graph.nodes.filter((n) => n.widgets?.length).map(
    (n) => [n.type + "#" + n.id, Object.fromEntries(n.widgets.map((w) => [w.name, w.value]))]))"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("home")
    make_tiny_zimage(home / "models")
    mesh = Mesh(home, stages=("imaging", "diffusion"))
    try:
        yield mesh.start()
    finally:
        mesh.stop()


@pytest.mark.browser
def test_default_graph_runs_and_shows_the_output(mesh: Mesh, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make system-deps` (apt-get install chromium)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # the server-side setting that makes the frontend skip its template browser
    assert mesh.http.post("/api/settings", json={"Comfy.TutorialCompleted": True}).status_code == 200
    frames: list[dict[str, Any]] = []
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
            page.goto(mesh.url + "/")
            page.wait_for_function("() => window.app?.graph?.nodes?.some((n) => n.type === 'UNETLoader')",
                                   timeout=30_000)
            types = set(page.evaluate("() => window.app.graph.nodes.map((n) => n.type)"))
            assert types >= DEFAULT_GRAPH_TYPES, types
            widgets = page.evaluate(WIDGETS)
            # the graph's default file names are offered by our lists, so the page keeps them
            assert {w.get("unet_name") for w in widgets.values()} >= {"z_image_turbo_bf16.safetensors"}, widgets
            assert {w.get("clip_name") for w in widgets.values()} >= {"qwen_3_4b.safetensors"}, widgets
            assert {w.get("vae_name") for w in widgets.values()} >= {"ae.safetensors"}, widgets
            edited = page.evaluate(SHRINK, [STEPS])
            assert sorted(edited) == ["EmptySD3LatentImage.height=64", "EmptySD3LatentImage.width=64",
                                      f"KSampler.steps={STEPS}"], edited
            # SaveImage in view: a node off screen is not drawn, nor its image loaded
            page.evaluate(CENTRE_ON_SAVE)
            page.screenshot(path=str(ARTIFACTS / "default-graph-1-opened.png"))

            page.get_by_role("button", name="Run").first.click()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not any(
                    f["type"] in ("execution_success", "execution_error") for f in frames):
                page.wait_for_timeout(100)
            deadline = time.monotonic() + 10  # the output image is fetched and drawn after `executed`
            shown: list[str] = []
            while time.monotonic() < deadline and not shown:
                shown = page.evaluate(SAVE_IMAGE_SHOWN)
                page.wait_for_timeout(100)
            page.screenshot(path=str(ARTIFACTS / "default-graph-2-after-run.png"))
        finally:
            context.close()

    assert not errors, errors
    kinds = [f["type"] for f in frames]
    assert "execution_success" in kinds, [f for f in frames if f["type"] == "execution_error"] or kinds
    executed = next(f["data"] for f in frames if f["type"] == "executed")
    image = executed["output"]["images"][0]
    assert image["type"] == "output"
    assert shown and image["filename"] in shown[0], shown
