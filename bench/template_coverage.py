"""The template coverage report of issue 14's acceptance: for each official ComfyUI template of the pinned
`comfyui-workflow-templates-json` package, whether our served node types cover it, whether core ComfyUI has all
its nodes, or whether only model-family nodes (issues 15, 16) are missing, and which templates run end to end.

Run: `.venv/bin/python bench/template_coverage.py` (reads the installed package `comfyui_workflow_templates_json`),
or `--wheel path/to/comfyui_workflow_templates_json-*.whl`. `--missing` lists every template with what it lacks.
Node types of a template: `nodes[].type` plus the nodes of `definitions.subgraphs[]`, leaving out subgraph ids
and the UI-only Note, MarkdownNote, Reroute and PrimitiveNode. Core ComfyUI's node types come from
`bench/comfyui_core_nodes.json` and the family issues' nodes from `bench/family_nodes.json` (both recorded once).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PACKAGE = "comfyui-workflow-templates-json==0.1.123"
MODULE = "comfyui_workflow_templates_json"
UI_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
# the categories the acceptance names, shown first
FOCUS = ("Image", "Image Tools", "Node Basics")
BEFORE = 3  # templates covered when issue 14 was filed

COVERED = "covered"
FAMILY = "only family nodes missing"
CORE = "ComfyUI core has all, generic nodes missing"
BEYOND = "needs nodes core ComfyUI lacks"
API = "API"
STATUSES = (COVERED, FAMILY, CORE, BEYOND)


def node_types(workflow: dict[str, Any]) -> set[str]:
    subgraphs = workflow.get("definitions", {}).get("subgraphs", [])
    ids = {graph.get("id") for graph in subgraphs}
    nodes = list(workflow.get("nodes", [])) + [node for graph in subgraphs for node in graph.get("nodes", [])]
    return {str(node["type"]) for node in nodes if node.get("type") and node["type"] not in ids} - UI_ONLY


def _package_files(wheel: Path | None) -> Iterator[tuple[str, bytes]]:
    """(file name, bytes) of the package's templates folder: the installed package, or a wheel's copy."""
    if wheel is None:
        for entry in resources.files(MODULE).joinpath("templates").iterdir():
            if entry.is_file():
                yield entry.name, entry.read_bytes()
        return
    prefix = MODULE + "/templates/"
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if name.startswith(prefix) and "/" not in name[len(prefix) :]:
                yield name[len(prefix) :], archive.read(name)


@dataclass
class Templates:
    categories: dict[str, str]  # template -> category title (API templates included)
    types: dict[str, set[str]]  # template -> node types, for the templates that need no paid API

    @property
    def api(self) -> list[str]:
        return sorted(name for name in self.categories if name.startswith("api_"))


def load_templates(wheel: Path | None = None) -> Templates:
    categories: dict[str, str] = {}
    types: dict[str, set[str]] = {}
    for name, data in _package_files(wheel):
        stem = Path(name).stem
        if name == "index.json":
            index = json.loads(data)
            categories = {t["name"]: group.get("title", "") for group in index for t in group["templates"]}
        elif name.endswith(".json") and not stem.startswith(("index", "api_")):
            workflow = json.loads(data)
            if isinstance(workflow, dict) and "nodes" in workflow:  # not a translated index or a fragment
                types[stem] = node_types(workflow)
    return Templates(categories, types)


def core_nodes() -> set[str]:
    """Core ComfyUI's node types at the recorded version (0.8.0)."""
    record = json.loads((REPO / "bench" / "comfyui_core_nodes.json").read_text())
    extras = {name for names in record["comfy_extras"].values() for name in names}
    return set(record["nodes_py"]) | extras | set(record.get("later", {}))


def family_nodes() -> dict[str, int]:
    """Node type -> the model-family issue that builds it."""
    return {str(k): int(v) for k, v in json.loads((REPO / "bench" / "family_nodes.json").read_text())["nodes"].items()}


def our_node_types() -> set[str]:
    """The node types the stages declare and those the orchestrator evaluates itself (the switch)."""
    from comfymesh.orchestrator.local_nodes import local_entries
    from tests.catalogs import builtin_nodes

    return set(builtin_nodes().schemas) | set(local_entries())


def runnable() -> dict[str, set[str]]:
    """Templates the end-to-end test runs (template -> output classes); empty when it cannot be imported."""
    try:
        from tests.e2e.test_templates import RUNNABLE
    except BaseException:  # pytest.importorskip raises Skipped, a BaseException, without playwright
        return {}
    return dict(RUNNABLE)


@dataclass
class Entry:
    status: str
    missing: set[str]  # node types we do not serve
    issues: set[int] = field(default_factory=set)  # family issues of the missing nodes


def classify(types: set[str], ours: set[str], core: set[str], family: dict[str, int]) -> Entry:
    missing = types - ours
    if not missing:
        return Entry(COVERED, missing)
    if missing <= set(family):
        return Entry(FAMILY, missing, {family[t] for t in missing})
    return Entry(CORE if types <= core else BEYOND, missing)


@dataclass
class Coverage:
    templates: Templates
    entries: dict[str, Entry]  # non-API template -> its entry
    core_has: set[str]  # templates whose every node type core ComfyUI has
    family: dict[str, int]
    running: dict[str, set[str]]

    def category(self, name: str) -> str:
        return self.templates.categories.get(name, "(not in the index)")

    def counts(self) -> dict[str, int]:
        counted = collections.Counter(entry.status for entry in self.entries.values())
        return {status: counted[status] for status in STATUSES}

    def gap(self) -> dict[str, list[str]]:
        """Generic (non-family) node types we lack in the focus categories' templates that core ComfyUI can run
        -> those templates: what issue 14's acceptance says must be empty."""
        needed: dict[str, list[str]] = collections.defaultdict(list)
        for name, entry in sorted(self.entries.items()):
            if self.category(name) in FOCUS and name in self.core_has:
                for node in sorted(entry.missing - set(self.family)):
                    needed[node].append(name)
        return dict(sorted(needed.items()))


def coverage(
    templates: Templates, ours: set[str], core: set[str], family: dict[str, int], running: dict[str, set[str]]
) -> Coverage:
    entries = {name: classify(types, ours, core, family) for name, types in templates.types.items()}
    core_has = {name for name, types in templates.types.items() if types <= core}
    return Coverage(templates, entries, core_has, family, running)


def report(cov: Coverage, listing: bool) -> str:
    counts = cov.counts()
    total = len(cov.entries)
    lines = [
        f"{total} templates need no paid API ({len(cov.templates.api)} more are API templates). "
        f"Covered (every node type served): **{counts[COVERED]}**, against {BEFORE} before. "
        f"Core ComfyUI has every node type of {len(cov.core_has)}.",
        "",
        "| category | templates | covered | only family nodes missing | core has all, generic missing "
        "| needs nodes core lacks | run end to end in tests |",
        "|---|---|---|---|---|---|---|",
    ]
    by_category: dict[str, list[str]] = collections.defaultdict(list)
    for name in cov.entries:
        by_category[cov.category(name)].append(name)
    order = [c for c in FOCUS if c in by_category] + sorted(
        set(by_category) - set(FOCUS), key=lambda c: (-len(by_category[c]), c)
    )
    for category in order:
        names = by_category[category]
        per = collections.Counter(cov.entries[name].status for name in names)
        ran = sum(name in cov.running for name in names)
        lines.append(
            f"| {category or '(none)'} | {len(names)} | " + " | ".join(str(per[s]) for s in STATUSES) + f" | {ran} |"
        )
    lines.append(f"| all | {total} | " + " | ".join(str(counts[s]) for s in STATUSES) + f" | {len(cov.running)} |")
    covered = sorted(name for name, entry in cov.entries.items() if entry.status == COVERED)
    lines += ["", "Covered: " + ", ".join(f"{name}{' (runs)' if name in cov.running else ''}" for name in covered)]
    family = collections.Counter(
        issue for entry in cov.entries.values() if entry.status == FAMILY for issue in entry.issues
    )
    lines.append("Only family nodes missing: " + ", ".join(f"issue {i}: {n}" for i, n in sorted(family.items())))
    gap = cov.gap()
    focus = sorted({name for names in gap.values() for name in names})
    lines += [
        "",
        f"Acceptance gap: {len(focus)} templates of {', '.join(FOCUS)} that core ComfyUI can run still "
        f"lack {len(gap)} generic node types (template count each): "
        + ", ".join(f"{node} {len(names)}" for node, names in sorted(gap.items(), key=lambda i: (-len(i[1]), i[0]))),
    ]
    if listing:
        lines.append("")
        for name in sorted(cov.entries, key=lambda n: (cov.category(n) not in FOCUS, cov.category(n), n)):
            entry = cov.entries[name]
            detail = ", ".join(sorted(entry.missing))
            if entry.issues:
                detail += " (issue " + ", ".join(map(str, sorted(entry.issues))) + ")"
            lines.append(f"- {name} ({cov.category(name)}): {entry.status}" + (f": {detail}" if detail else ""))
        lines += [f"- {name} ({cov.category(name)}): {API}" for name in cov.templates.api]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--wheel",
        type=Path,
        help="read the templates from this wheel of " + PACKAGE + " instead of the installed package",
    )
    parser.add_argument("--missing", action="store_true", help="list every template with what it lacks")
    args = parser.parse_args()
    cov = coverage(load_templates(args.wheel), our_node_types(), core_nodes(), family_nodes(), runnable())
    print(report(cov, args.missing))


if __name__ == "__main__":
    main()
