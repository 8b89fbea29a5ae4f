"""The frontend's own default graph (Z-Image Turbo) in headless chromium against a real mesh, from a fresh
profile with the tutorial marked done, so the page opens straight on that graph (as every browser does after
the first visit). Tiny random-weight files in ComfyUI's layouts stand under the graph's default file names;
the page's graph API shrinks it to 64×64 in 2 steps, Run is pressed, and the SaveImage node shows the output.
Screenshots go to test-artifacts/frontend/.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfymesh.diffusion.models.tiny_zimage import make_tiny_zimage
from tests.e2e.chromium import (
    SHRINK,
    WINDOW,
    chromium_page,
    record_frames,
    saved_images,
    screenshots,
    skip_template_browser,
)
from tests.mesh import Mesh

STEPS = 2
DEFAULT_GRAPH_TYPES = {"UNETLoader", "CLIPLoader", "VAELoader", "ModelSamplingAuraFlow", "CLIPTextEncode",
                       "EmptySD3LatentImage", "KSampler", "VAEDecode", "SaveImage"}
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
    artifacts = screenshots("frontend")
    skip_template_browser(mesh)
    with chromium_page(tmp_path / "profile", WINDOW) as (page, errors):
        frames = record_frames(page)
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
        edited = page.evaluate(SHRINK, ["EmptySD3LatentImage", STEPS])
        assert sorted(edited) == ["EmptySD3LatentImage.height=64", "EmptySD3LatentImage.width=64",
                                  f"KSampler.steps={STEPS}"], edited
        # SaveImage in view: a node off screen is not drawn, nor its image loaded
        page.evaluate(CENTRE_ON_SAVE)
        page.screenshot(path=str(artifacts / "default-graph-1-opened.png"))

        page.get_by_role("button", name="Run").first.click()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(
                f["type"] in ("execution_success", "execution_error") for f in frames):
            page.wait_for_timeout(100)
        shown = saved_images(page, 10_000)
        page.screenshot(path=str(artifacts / "default-graph-2-after-run.png"))

    assert not errors, errors
    kinds = [f["type"] for f in frames]
    assert "execution_success" in kinds, [f for f in frames if f["type"] == "execution_error"] or kinds
    executed = next(f["data"] for f in frames if f["type"] == "executed")
    image = executed["output"]["images"][0]
    assert image["type"] == "output"
    assert shown and image["filename"] in shown[0], shown
