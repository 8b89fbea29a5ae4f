"""Which official ComfyUI templates our nodes cover: for each template that needs no paid API, the node
types we lack, from the pinned `comfyui-workflow-templates-json` package.

Run: `.venv/bin/python bench/template_coverage.py` (downloads the pinned wheel with pip, no dependencies),
or `--wheel path/to/comfyui_workflow_templates_json-*.whl`. `--missing` lists every template's missing
types. Node types of a template: `nodes[].type` plus the nodes of `definitions.subgraphs[]`, leaving out
subgraph ids and the UI-only Note, MarkdownNote, Reroute and PrimitiveNode.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PACKAGE = "comfyui-workflow-templates-json==0.1.123"
UI_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


def node_types(workflow: dict[str, Any]) -> set[str]:
    subgraphs = workflow.get("definitions", {}).get("subgraphs", [])
    ids = {graph.get("id") for graph in subgraphs}
    nodes = list(workflow.get("nodes", [])) + [node for graph in subgraphs for node in graph.get("nodes", [])]
    return {str(node["type"]) for node in nodes if node.get("type") and node["type"] not in ids} - UI_ONLY


def load_templates(wheel: Path) -> tuple[dict[str, str], dict[str, set[str]]]:
    """(template -> category title, template -> node types) for the templates that need no paid API."""
    with zipfile.ZipFile(wheel) as archive:
        prefix = "comfyui_workflow_templates_json/templates/"
        index = json.loads(archive.read(prefix + "index.json"))
        categories = {template["name"]: group.get("title", "") for group in index for template in group["templates"]}
        types = {}
        for name in archive.namelist():
            stem = Path(name).stem
            if name.startswith(prefix) and name.endswith(".json") and not stem.startswith(("index", "api_")):
                workflow = json.loads(archive.read(name))
                if isinstance(workflow, dict) and "nodes" in workflow:  # not a translated index or a fragment
                    types[stem] = node_types(workflow)
    return categories, types


def our_node_types() -> set[str]:
    from tests.catalogs import builtin_nodes

    return set(builtin_nodes().schemas)


def report(categories: dict[str, str], types: dict[str, set[str]], ours: set[str], listing: bool) -> str:
    lines = [f"{len(types)} templates need no paid API; we have {len(ours)} node types.", "",
             "| category | templates | all node types served |", "|---|---|---|"]
    by_category: dict[str, list[str]] = collections.defaultdict(list)
    for name in types:
        by_category[categories.get(name, "(not in the index)")].append(name)
    covered_total = 0
    for category, names in sorted(by_category.items(), key=lambda item: -len(item[1])):
        covered = [name for name in names if types[name] <= ours]
        covered_total += len(covered)
        lines.append(f"| {category or '(none)'} | {len(names)} | {len(covered)} |")
    lines += ["", f"covered in all: {covered_total} of {len(types)}", ""]
    missing = collections.Counter(t for name in types for t in types[name] - ours)
    lines.append("most needed node types we lack (templates using each): " +
                 ", ".join(f"{t} {n}" for t, n in missing.most_common(30)))
    if listing:
        lines.append("")
        for name in sorted(types):
            lacking = sorted(types[name] - ours)
            lines.append(f"- {name} ({categories.get(name, '')}): " + (", ".join(lacking) if lacking else "covered"))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, help="the templates wheel (default: pip download " + PACKAGE + ")")
    parser.add_argument("--missing", action="store_true", help="list every template's missing node types")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        wheel = args.wheel
        if wheel is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", PACKAGE, "-d", folder],
                           check=True)
            wheel = next(Path(folder).glob("*.whl"))
        categories, types = load_templates(wheel)
    print(report(categories, types, our_node_types(), args.missing))


if __name__ == "__main__":
    main()
