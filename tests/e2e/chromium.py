"""Headless chromium for the e2e tests: the one binary and its flags, a page that collects its uncaught errors and
websocket frames, and the scripts the tests run in the official frontend's page."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.mesh import REPO, Mesh

if TYPE_CHECKING:
    from playwright.sync_api import Page, ViewportSize

# without playwright, every module that imports this one is skipped
playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
# no GPU, no QUIC, and none of chromium's own traffic (updates, sync) beside the page's
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WINDOW: ViewportSize = {"width": 1400, "height": 900}  # the frontend's side and top bars leave the canvas room

# What a user does in the node widgets, done through the page's own graph API: the `latent` node's image 64×64,
# the KSampler's steps `steps`. Returns "type.widget=value" for each widget set.
SHRINK = """([latent, steps]) => {
    const edited = [];
    for (const node of window.app.graph.nodes) {
        for (const widget of node.widgets ?? []) {
            const size = node.type === latent && ["width", "height"].includes(widget.name);
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
# the URLs of the images the SaveImage node has drawn
SAVE_IMAGE_SHOWN = """() => {
    const save = window.app.graph.nodes.find((node) => node.type === "SaveImage");
    return (save?.imgs ?? []).filter((img) => img.complete && img.naturalWidth > 0).map((img) => img.src);
}"""
# a UI workflow turned into an API prompt as the Run button does (subgraphs, primitives, links resolved)
TO_PROMPT = """async (workflow) => {
    await window.app.loadGraphData(workflow, true, false);
    const { output } = await window.app.graphToPrompt();
    return output;
}"""


@contextmanager
def chromium_page(profile: Path | None = None, viewport: ViewportSize | None = None,
                  ) -> Iterator[tuple[Page, list[str]]]:
    """A page in headless chromium and the list its uncaught errors go to. With `profile`, a persistent profile
    in that (fresh) folder, as a user's browser keeps its settings; without, an incognito one. Fails the test
    when chromium is not installed."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make system-deps` (apt-get install chromium)")
    errors: list[str] = []
    with playwright.sync_playwright() as driver:
        if profile is None:
            browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            context = browser.new_context(viewport=viewport)
        else:
            context = driver.chromium.launch_persistent_context(
                user_data_dir=str(profile), executable_path=CHROMIUM, args=CHROMIUM_ARGS, viewport=viewport)
        try:
            page = context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page, errors
        finally:
            context.close()
            if profile is None:
                browser.close()


def record_frames(page: Page) -> list[dict[str, Any]]:
    """The list every JSON frame the page receives on a websocket is appended to, in order."""
    frames: list[dict[str, Any]] = []
    page.on("websocket", lambda ws: ws.on(
        "framereceived", lambda f: frames.append(json.loads(f)) if isinstance(f, str) else None))
    return frames


def screenshots(name: str) -> Path:
    """test-artifacts/`name`/, made if missing: where a test leaves its screenshots."""
    folder = REPO / "test-artifacts" / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def skip_template_browser(mesh: Mesh) -> None:
    """Mark the tutorial done, a server-side setting: the frontend then opens on its default graph, as on every
    visit after the first, instead of its template browser."""
    assert mesh.http.post("/api/settings", json={"Comfy.TutorialCompleted": True}).status_code == 200


def open_app(page: Page, mesh: Mesh) -> None:
    """Open the frontend the mesh serves and wait until its app and graph are up."""
    page.goto(mesh.url + "/")
    page.wait_for_function("() => window.app?.graph && window.app.vueAppReady !== false", timeout=60_000)


def saved_images(page: Page, timeout_ms: float) -> list[str]:
    """The URLs of the images the SaveImage node shows. It fetches and draws them after `executed`, so this waits
    up to `timeout_ms` for one; [] if none shows by then (the caller's assertion says what was expected)."""
    try:
        page.wait_for_function(f"() => ({SAVE_IMAGE_SHOWN})().length > 0", timeout=timeout_ms)
    except playwright.TimeoutError:
        return []
    return list(page.evaluate(SAVE_IMAGE_SHOWN))
