"""Our UI → API conversion (`comfymesh.graph.ui_workflow`) against the official frontend's own: each workflow is
loaded into the frontend served by a real mesh (`app.loadGraphData`, then `app.graphToPrompt`, in headless
chromium) and converted by us from the same `/object_info`; the two prompts must be equal, node for node.

The workflows: the official templates that tests/e2e/test_templates.py runs, our ui/templates/, and official
templates chosen for what they exercise (subgraphs, nested ids, promoted widgets, PrimitiveNode, Reroute,
bypassed nodes, V3 dynamic combos, switch nodes).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import pytest

from comfymesh.graph.ui_workflow import is_ui_workflow, ui_to_api
from tests.e2e.chromium import TO_PROMPT, chromium_page, open_app
from tests.e2e.test_templates import RUNNABLE, template
from tests.mesh import REPO, Mesh

OURS = sorted(path for path in (REPO / "ui" / "templates").glob("*.json") if path.name != "index.json")
FEATURES = {
    "basic_switch_node": "a subgraph, bypassed nodes, ComfySwitchNode, PrimitiveString",
    "flux1_krea_dev": "a subgraph with promoted widgets",
    "flux_dev_checkpoint_example": "a subgraph",
    "flux_fill_inpaint_example": "a subgraph fed by an upload",
    "flux_redux_model_example": "a PrimitiveNode",
    "image_flux.1_fill_dev_OneReward": "two subgraphs, a bypassed node",
    "image_netayume_lumina_t2i": "two subgraphs",
    "image_omnigen2_image_edit": "bypassed nodes",
    "image_qwen_Image_2512_controlnet": "a Reroute, an instance listing fewer inputs than its subgraph, a dynamic combo",
    "image_qwen_image_union_control_lora": "a subgraph with links in and out",
    "image_z_image_turbo": "a subgraph (the frontend's default-graph family)",
    "utility_image_stitch": "V3 dynamic combos (ResizeImageMaskNode)",
    "sd3.5_simple_example": "plain widgets",
}
OFFICIAL = sorted(set(RUNNABLE) | set(FEATURES))


def variant(name: str) -> dict[str, Any]:
    """Our txt2img template edited the way users do, for what the templates above do not show."""
    workflow = json.loads((REPO / "ui" / "templates" / "comfymesh-sd15-txt2img.json").read_text())
    nodes = {node["id"]: node for node in workflow["nodes"]}
    if name == "text-replacement":  # save-node patterns by S&R name and by title, dates, unknown ones kept
        nodes[9]["widgets_values"] = ["run_%date:yyyy-MM-dd%_%EmptyLatentImage.width%_%Positive prompt.text%"
                                      "_%KSampler.denoise%_%nope.x%_%width%_%date:yy M d%"]
        nodes[6]["widgets_values"] = ["a photo /* of a */ bottle // kept out"]  # comments stripped
    elif name == "muted-sampler":
        nodes[3]["mode"] = 2
    elif name == "bypassed-prompt":  # nothing of its output's type to pass on: the sampler loses that input
        nodes[7]["mode"] = 4
    return workflow


VARIANTS = ("text-replacement", "muted-sampler", "bypassed-prompt")
TITLES = "() => Object.fromEntries(Object.entries(LiteGraph.registered_node_types).map(([k, v]) => [k, v.title]))"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("ui-workflow-home"), stages=("imaging", "diffusion"))
    try:
        yield mesh.start()
    finally:
        mesh.stop()


@pytest.fixture(scope="module")
def frontend(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every workflow as the frontend converts it, plus the titles it gives untitled nodes (its translations)."""
    converted: dict[str, Any] = {}
    with chromium_page(tmp_path_factory.mktemp("profile")) as (page, errors):
        open_app(page, mesh)
        for name in OFFICIAL:
            converted[name] = page.evaluate(TO_PROMPT, template(name))
        for path in OURS:
            converted[path.name] = page.evaluate(TO_PROMPT, json.loads(path.read_text()))
        for name in VARIANTS:
            converted[name] = page.evaluate(TO_PROMPT, variant(name))
        converted["__titles__"] = page.evaluate(TITLES)
    assert not errors, errors
    return converted


def _differences(ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    lines = [f"{node}: only {'ours' if node in ours else 'theirs'}" for node in set(ours) ^ set(theirs)]
    for node in sorted(set(ours) & set(theirs)):
        if ours[node] != theirs[node]:
            lines.append(f"{node}: ours {ours[node]} theirs {theirs[node]}")
    return lines


@pytest.mark.browser
@pytest.mark.parametrize("name", OFFICIAL + [path.name for path in OURS] + list(VARIANTS))
def test_conversion_equals_the_frontends(name: str, mesh: Mesh, frontend: dict[str, Any]) -> None:
    if name in VARIANTS:
        workflow = variant(name)
    elif name.endswith(".json"):
        workflow = json.loads((REPO / "ui" / "templates" / name).read_text())
    else:
        workflow = template(name)
    assert is_ui_workflow(workflow)
    info = mesh.http.get("/object_info").json()
    ours = ui_to_api(workflow, info, random.Random(0), titles=frontend["__titles__"])
    theirs = frontend[name]
    assert theirs, f"the frontend made an empty prompt of {name}"
    assert not _differences(ours, theirs), "\n".join(_differences(ours, theirs))
