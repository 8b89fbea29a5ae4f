"""A ControlNet graph and an inpainting graph built in the official ComfyUI frontend (1.58.1) as a user builds
them, in headless chromium from a fresh profile, and run by a real mesh with tiny random-weight files.

The page opens on its default graph (the tutorial marked done, as every visit after the first); the graph is
cleared and each node is added through the page's graph API (`LiteGraph.createNode`, `app.graph.add`), wired
with `node.connect`, and its widgets set with their callbacks, as the canvas does when a user edits them. The
Run button queues it; the test waits for `execution_success` on the page's websocket and for the SaveImage
node to show the output image. Screenshots go to test-artifacts/frontend/.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from comfymesh.diffusion.models.tiny_concat import make_tiny_concat_checkpoint
from comfymesh.diffusion.models.tiny_controlnet import make_tiny_controlnet
from tests.e2e.chromium import WINDOW, chromium_page, record_frames, saved_images, screenshots, skip_template_browser
from tests.mesh import SHARED, Mesh

CHECKPOINT = "sd15.safetensors"
INPAINT_CHECKPOINT = "sd15_inpainting.safetensors"  # a tiny 9-channel SD1.5 inpainting UNet
CONTROLNET = "control_sd15_tiny.safetensors"
PHOTO = "photo.png"
HOLED = "photo_with_hole.png"  # RGBA: alpha 0 in HOLE, which LoadImage gives as mask 1
SIZE = 64
HOLE = (20, 20, 44, 44)
STEPS = 2
SECONDS = 180

# Clear the canvas and build `graph` as a user would: add each node, wire it, then set its widgets through
# the widgets themselves (value, then callback). Returns each key's node id; throws on anything refused.
BUILD = """({nodes, links}) => {
    const { app, LiteGraph } = window;
    app.graph.clear();
    const made = {};
    Object.entries(nodes).forEach(([key, spec], i) => {
        const node = LiteGraph.createNode(spec.type);
        if (!node) throw new Error(`the page does not know ${spec.type}`);
        node.pos = [40 + 460 * (i % 4), 40 + 340 * Math.floor(i / 4)];
        app.graph.add(node);
        made[key] = node;
    });
    for (const [from, output, to, input] of links) {
        const source = made[from], target = made[to];
        const slot = target.findInputSlot(input);
        if (slot < 0 || !source.connect(output, target, slot))
            throw new Error(`cannot connect ${source.type}[${output}] to ${target.type}.${input}`);
    }
    for (const [key, spec] of Object.entries(nodes)) {
        const node = made[key];
        for (const [name, value] of Object.entries(spec.widgets ?? {})) {
            const widget = node.widgets?.find((w) => w.name === name);
            if (!widget) throw new Error(`${spec.type} has no widget ${name}`);
            const offered = widget.options?.values;
            if (Array.isArray(offered) && !offered.includes(value))
                throw new Error(`${spec.type}.${name} does not offer ${value}: ${offered}`);
            widget.value = value;
            widget.callback?.(widget.value, app.canvas, node);
        }
    }
    app.canvas.ds.scale = 0.6;  // the whole graph in view for the screenshots
    app.canvas.ds.offset = [150, 200];  // clear of the side bar and the top bar
    app.graph.setDirtyCanvas(true, true);
    return Object.fromEntries(Object.entries(made).map(([key, node]) => [key, String(node.id)]));
}"""

SAMPLER = {"seed": 11, "control_after_generate": "fixed", "steps": STEPS, "cfg": 7.0, "sampler_name": "euler",
           "scheduler": "normal", "denoise": 1.0}
TEXT = {"positive": {"type": "CLIPTextEncode", "widgets": {"text": "an astronaut on the moon"}},
        "negative": {"type": "CLIPTextEncode", "widgets": {"text": "blurry, watermark"}}}
CONTROLNET_GRAPH: dict[str, Any] = {
    "nodes": {
        "checkpoint": {"type": "CheckpointLoaderSimple", "widgets": {"ckpt_name": CHECKPOINT}},
        **TEXT,
        "photo": {"type": "LoadImage", "widgets": {"image": PHOTO}},
        "controlnet": {"type": "ControlNetLoader", "widgets": {"control_net_name": CONTROLNET}},
        "apply": {"type": "ControlNetApplyAdvanced",
                  "widgets": {"strength": 0.8, "start_percent": 0.0, "end_percent": 1.0}},
        "latent": {"type": "EmptyLatentImage", "widgets": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "sampler": {"type": "KSampler", "widgets": SAMPLER},
        "decode": {"type": "VAEDecode"},
        "save": {"type": "SaveImage", "widgets": {"filename_prefix": "ui_controlnet"}},
    },
    "links": [
        ["checkpoint", 1, "positive", "clip"], ["checkpoint", 1, "negative", "clip"],
        ["positive", 0, "apply", "positive"], ["negative", 0, "apply", "negative"],
        ["controlnet", 0, "apply", "control_net"], ["photo", 0, "apply", "image"],
        ["checkpoint", 0, "sampler", "model"], ["apply", 0, "sampler", "positive"],
        ["apply", 1, "sampler", "negative"], ["latent", 0, "sampler", "latent_image"],
        ["sampler", 0, "decode", "samples"], ["checkpoint", 2, "decode", "vae"], ["decode", 0, "save", "images"],
    ],
}
INPAINT_GRAPH: dict[str, Any] = {
    "nodes": {
        "checkpoint": {"type": "CheckpointLoaderSimple", "widgets": {"ckpt_name": INPAINT_CHECKPOINT}},
        **TEXT,
        "photo": {"type": "LoadImage", "widgets": {"image": HOLED}},
        "encode": {"type": "VAEEncodeForInpaint", "widgets": {"grow_mask_by": 4}},
        "sampler": {"type": "KSampler", "widgets": SAMPLER},
        "decode": {"type": "VAEDecode"},
        "save": {"type": "SaveImage", "widgets": {"filename_prefix": "ui_inpaint"}},
    },
    "links": [
        ["checkpoint", 1, "positive", "clip"], ["checkpoint", 1, "negative", "clip"],
        ["photo", 0, "encode", "pixels"], ["photo", 1, "encode", "mask"], ["checkpoint", 2, "encode", "vae"],
        ["checkpoint", 0, "sampler", "model"], ["positive", 0, "sampler", "positive"],
        ["negative", 0, "sampler", "negative"], ["encode", 0, "sampler", "latent_image"],
        ["sampler", 0, "decode", "samples"], ["checkpoint", 2, "decode", "vae"], ["decode", 0, "save", "images"],
    ],
}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("graphs-home")
    mesh = Mesh(home, stages=("imaging", "diffusion"))
    subprocess.run([sys.executable, "-m", "comfymesh.diffusion.models.tiny_checkpoint", "--family", "sd15",
                    str(home / "models" / "checkpoints" / CHECKPOINT)], check=True, capture_output=True)
    make_tiny_concat_checkpoint(home / "models" / "checkpoints" / INPAINT_CHECKPOINT, "sd15", "inpaint")
    make_tiny_controlnet(home / "models" / "controlnet" / CONTROLNET, family="sd15")
    photo = Image.open(SHARED / "data" / "astronaut.png").convert("RGB").resize((SIZE, SIZE))
    photo.save(home / "input" / PHOTO)
    holed = photo.convert("RGBA")
    holed.paste((0, 0, 0, 0), HOLE)  # a transparent square: LoadImage's mask is 1 there, 0 elsewhere
    holed.save(home / "input" / HOLED)
    try:
        yield mesh.start()
    finally:
        mesh.stop()


def build_and_run(mesh: Mesh, profile: Path, graph: dict[str, Any], name: str,
                  ) -> tuple[dict[str, str], list[dict[str, Any]], list[str]]:
    """Open a fresh profile, build `graph` in the page, press Run, and return (node ids by key, websocket JSON
    frames, image URLs the SaveImage node shows), with screenshots before and after the run."""
    artifacts = screenshots("frontend")

    def finished(payload: str | bytes) -> bool:
        return isinstance(payload, str) and json.loads(payload)["type"] in ("execution_success", "execution_error")

    with chromium_page(profile, WINDOW) as (page, errors):
        frames = record_frames(page)
        with page.expect_websocket(lambda ws: ws.url.split("?")[0].endswith("/ws")) as socket:
            page.goto(mesh.url + "/")
        # the page is ready once its default graph is on the canvas
        page.wait_for_function("() => window.LiteGraph && window.app?.graph?.nodes?.length > 0", timeout=60_000)
        ids = page.evaluate(BUILD, graph)
        page.screenshot(path=str(artifacts / f"{name}-1-built.png"))
        with socket.value.expect_event("framereceived", predicate=finished, timeout=SECONDS * 1000):
            page.get_by_role("button", name="Run").first.click()
        succeeded = any(f["type"] == "execution_success" for f in frames)
        shown = saved_images(page, 30_000) if succeeded else []
        page.screenshot(path=str(artifacts / f"{name}-2-after-run.png"))
    assert not errors, errors
    return ids, frames, shown


def check_run(mesh: Mesh, ids: dict[str, str], frames: list[dict[str, Any]], shown: list[str],
              graph: dict[str, Any]) -> dict[str, Any]:
    """The run succeeded, the SaveImage node shows its 64×64 output, and the prompt the page queued is the
    graph built: every node type, and the widget values set in the page. Returns that prompt."""
    kinds = [f["type"] for f in frames]
    assert "execution_success" in kinds, [f for f in frames if f["type"] == "execution_error"] or kinds
    executed = [f["data"] for f in frames if f["type"] == "executed" and f["data"]["node"] == ids["save"]]
    assert len(executed) == 1, [f for f in frames if f["type"] == "executed"]
    image = executed[0]["output"]["images"][0]
    assert image["type"] == "output"
    assert shown and f"filename={image['filename']}" in shown[0], shown
    png = mesh.http.get("/view", params={"filename": image["filename"], "subfolder": image["subfolder"],
                                         "type": "output"})
    assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).size == (SIZE, SIZE)

    prompt_id = next(f["data"]["prompt_id"] for f in frames if f["type"] == "execution_success")
    prompt = mesh.http.get(f"/history/{prompt_id}").json()[prompt_id]["prompt"][2]
    assert {key: prompt[node_id]["class_type"] for key, node_id in ids.items()} == {
        key: spec["type"] for key, spec in graph["nodes"].items()}
    for key, spec in graph["nodes"].items():
        inputs = prompt[ids[key]]["inputs"]
        for name, value in spec.get("widgets", {}).items():
            if name != "control_after_generate":  # a frontend-only widget, not sent
                assert inputs[name] == value, (key, name, inputs)
    for source, output, target, input_name in graph["links"]:
        assert prompt[ids[target]]["inputs"][input_name] == [ids[source], output], (target, input_name)
    return dict(prompt)


@pytest.mark.browser
def test_controlnet_graph_built_in_the_page_runs(mesh: Mesh, tmp_path: Path) -> None:
    skip_template_browser(mesh)
    ids, frames, shown = build_and_run(mesh, tmp_path / "profile", CONTROLNET_GRAPH, "controlnet-graph")
    check_run(mesh, ids, frames, shown, CONTROLNET_GRAPH)
    ran = {f["data"]["node"] for f in frames if f["type"] == "executing" and f["data"]["node"]}
    assert {ids["controlnet"], ids["apply"], ids["sampler"]} <= ran, ran
    steps = [f["data"]["value"] for f in frames if f["type"] == "progress" and f["data"]["node"] == ids["sampler"]]
    assert steps == list(range(1, STEPS + 1)), steps


@pytest.mark.browser
def test_inpainting_graph_built_in_the_page_runs(mesh: Mesh, tmp_path: Path) -> None:
    skip_template_browser(mesh)
    ids, frames, shown = build_and_run(mesh, tmp_path / "profile", INPAINT_GRAPH, "inpaint-graph")
    prompt = check_run(mesh, ids, frames, shown, INPAINT_GRAPH)
    # the mask is LoadImage's second output, read from the PNG's alpha hole
    assert prompt[ids["encode"]]["inputs"]["mask"] == [ids["photo"], 1]
