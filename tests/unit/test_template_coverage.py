"""The template coverage report (bench/template_coverage.py) on the installed templates package: the end-to-end
templates are covered, the counts add up, and issue 14's acceptance gap (generic core nodes the Image, Image Tools
and Node Basics templates need) is empty."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.e2e.test_templates import RUNNABLE

BENCH = Path(__file__).resolve().parents[2] / "bench" / "template_coverage.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("template_coverage", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


tc = _load()


@pytest.fixture(scope="module")
def cov() -> Any:
    return tc.coverage(tc.load_templates(), tc.our_node_types(), tc.core_nodes(), tc.family_nodes(), dict(RUNNABLE))


def test_runnable_templates_are_covered(cov: Any) -> None:
    assert RUNNABLE, "the end-to-end test lists no template"
    statuses = {name: cov.entries[name].status for name in RUNNABLE}
    assert statuses == dict.fromkeys(RUNNABLE, tc.COVERED)


def test_counts_add_up(cov: Any) -> None:
    entries = cov.entries
    counts = cov.counts()
    assert sum(counts.values()) == len(entries) > 0
    assert not set(entries) & set(cov.templates.api)
    # a covered template's nodes are all served; core having every node is a superset of "core has, generic missing"
    assert counts[tc.COVERED] >= tc.BEFORE
    assert counts[tc.CORE] == sum(1 for name in cov.core_has if entries[name].status == tc.CORE)
    for entry in entries.values():
        assert (entry.status == tc.COVERED) == (not entry.missing)
        if entry.status == tc.FAMILY:
            assert entry.missing <= set(cov.family) and entry.issues <= {0, 15, 16}  # 0: a family no issue owns yet
    report = tc.report(cov, listing=True)
    assert f"**{counts[tc.COVERED]}**" in report
    assert sum(line.startswith("- ") for line in report.splitlines()) == len(entries) + len(cov.templates.api)


def test_family_nodes_are_core_nodes() -> None:
    # every family node the templates need at the recorded version is a core node, so "core has" counts them
    core = tc.core_nodes()
    assert {"FluxGuidance", "ReferenceLatent", "EmptyFlux2LatentImage", "QuadrupleCLIPLoader"} <= core
    assert set(tc.family_nodes().values()) == {0, 15, 16}


def test_focus_templates_core_can_run_are_served(cov: Any) -> None:
    gap = cov.gap()
    assert not gap, "generic core nodes we lack: " + ", ".join(
        f"{node} ({len(names)} templates)" for node, names in gap.items()
    )
