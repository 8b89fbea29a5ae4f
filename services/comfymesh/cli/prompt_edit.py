"""What `comfymesh run` does to a workflow before submitting it: read it (a file, or a template the gateway
serves by name), turn a UI workflow into an API prompt, apply `--set` overrides and point image loaders at
uploaded files."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from comfymesh.cli.gateway import GatewayError, call
from comfymesh.graph.ui_workflow import UIWorkflowError, is_ui_workflow, ui_to_api

Prompt = dict[str, dict[str, Any]]


def load_workflow(http: httpx.Client, source: str) -> Any:
    """The JSON of a workflow file, else of the saved workflow or the template (ui/templates) named `source`."""
    path = Path(source)
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise GatewayError([f"{path} is not JSON: {exc}", "give an exported workflow (UI or API format)"],
                               2) from exc
    if path.suffix == ".json" or "/" in source:
        raise GatewayError([f"{source}: no such file"], 2)
    saved = http.get(f"/v1/workflows/{source}")
    if saved.status_code == 200:  # a saved workflow: its API-format prompt
        return saved.json()["workflow"]
    response = http.get(f"/templates/{source}.json")
    if response.status_code != 200:
        raise GatewayError([f"{source}: no such file, and the gateway has no saved workflow or template of that name",
                            "give a workflow file, a saved workflow (`comfymesh workflows list`) or a template "
                            "from ui/templates/ (e.g. comfymesh-imaging)"], 2)
    return response.json()


def to_prompt(http: httpx.Client, workflow: Any) -> Prompt:
    """An API prompt: as given, or converted from a UI workflow with the gateway's node declarations."""
    if isinstance(workflow, dict) and isinstance(workflow.get("prompt"), dict):
        workflow = workflow["prompt"]
    if is_ui_workflow(workflow):
        try:
            return ui_to_api(workflow, call(http, "GET", "/object_info").json())
        except UIWorkflowError as exc:
            raise GatewayError([f"the UI workflow cannot be converted: {exc}"], 2) from exc
    if not isinstance(workflow, dict) or not all(isinstance(node, dict) for node in workflow.values()):
        raise GatewayError(["this is neither a UI workflow (nodes and links) nor an API prompt (node id → "
                            "class_type and inputs)"], 2)
    return workflow


def parse_value(text: str) -> Any:
    """A JSON value where the text is one (5, 0.5, true, "a b", [..]), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def find_node(prompt: Mapping[str, Mapping[str, Any]], ref: str) -> str | None:
    """The node `ref` names: its id, else its unique title, else its unique class type."""
    if ref in prompt:
        return ref
    for key in (lambda node: (node.get("_meta") or {}).get("title"), lambda node: node.get("class_type")):
        matches = [node_id for node_id, node in prompt.items() if key(node) == ref]
        if len(matches) == 1:
            return matches[0]
    return None


def apply_set(prompt: Prompt, assignment: str) -> str:
    """Apply `[node.]input=value` to the prompt; answers the node id set. Without a node, the input must be
    a value (not a link) on exactly one node."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise GatewayError([f"--set {assignment!r}: write it as input=value or node.input=value"], 2)
    value = parse_value(raw)
    head, dot, tail = key.partition(".")
    node_id = find_node(prompt, head) if dot else None
    if node_id is not None:
        prompt[node_id]["inputs"][tail] = value
        return node_id
    holders = [n for n, node in prompt.items() if key in node.get("inputs", {})
               and not _is_link(node["inputs"][key])]
    if len(holders) == 1:
        prompt[holders[0]]["inputs"][key] = value
        return holders[0]
    if not holders:
        raise GatewayError([f"--set {assignment!r}: no node has a value input named {key!r}",
                            "name the node: --set <node id|title|class>.<input>=value"], 2)
    names = ", ".join(f"{n} ({prompt[n].get('class_type')})" for n in holders)
    raise GatewayError([f"--set {assignment!r}: {key!r} is an input of several nodes: {names}",
                        f"say which, e.g. --set {holders[0]}.{key}={raw}"], 2)


def image_loaders(prompt: Prompt, object_info: Mapping[str, Any]) -> list[str]:
    """Nodes whose `image` input is a file of the input folder (a combo that takes uploads)."""
    found = []
    for node_id, node in prompt.items():
        spec = ((object_info.get(node.get("class_type", "")) or {}).get("input") or {}).get("required", {}).get("image")
        if isinstance(spec, list) and len(spec) > 1 and isinstance(spec[1], dict) and spec[1].get("image_upload"):
            found.append(node_id)
    return found


def attach_image(http: httpx.Client, prompt: Prompt, argument: str) -> str:
    """Upload the file of `[node=]path` and make that node (or the only image loader) read it."""
    ref, sep, path_text = argument.rpartition("=")
    path = Path(path_text)
    if not path.is_file():
        raise GatewayError([f"--image {argument!r}: {path} is not a file"], 2)
    if sep:
        node_id = find_node(prompt, ref)
        if node_id is None:
            raise GatewayError([f"--image {argument!r}: no node {ref!r} (give a node id, title or class)"], 2)
    else:
        loaders = image_loaders(prompt, call(http, "GET", "/object_info").json())
        if len(loaders) != 1:
            where = ", ".join(loaders) or "none"
            raise GatewayError([f"--image {argument!r}: the workflow has {len(loaders)} image loaders ({where})",
                                "say which: --image <node>=<path>"], 2)
        node_id = loaders[0]
    with path.open("rb") as handle:
        stored = call(http, "POST", "/upload/image", files={"image": (path.name, handle)},
                      data={"type": "input", "overwrite": "true"}).json()
    name = f"{stored['subfolder']}/{stored['name']}" if stored.get("subfolder") else stored["name"]
    prompt[node_id]["inputs"]["image"] = name
    return node_id


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)
