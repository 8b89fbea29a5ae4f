"""Which package may import which (architecture.md, "Packages"): a service never imports another service,
libraries import no service, and the contracts package imports only itself, the generated stubs and the
outbound-request policy (job options check webhook URLs with it)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("gateway", "orchestrator", "imaging", "diffusion", "cli")


def imports(root: Path) -> Iterator[tuple[Path, str]]:
    for path in root.rglob("*.py"):
        if "v1" in path.relative_to(REPO).parts:  # generated stubs
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                yield from ((path, alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                yield path, node.module


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "comfymesh" else None


def test_libraries_import_no_service() -> None:
    wrong = [f"{path.relative_to(REPO)} imports {module}" for path, module in imports(REPO / "libs" / "comfymesh")
             if package_of(module) in SERVICES]
    assert wrong == []


def test_a_service_imports_no_other_service() -> None:
    wrong = []
    for service in SERVICES:
        for path, module in imports(REPO / "services" / "comfymesh" / service):
            if package_of(module) in SERVICES and package_of(module) != service:
                wrong.append(f"{path.relative_to(REPO)} imports {module}")
    assert wrong == []


def test_the_contracts_import_only_themselves() -> None:
    wrong = [f"{path.relative_to(REPO)} imports {module}"
             for path, module in imports(REPO / "libs" / "comfymesh" / "contracts")
             if package_of(module) not in (None, "contracts", "v1", "outbound")]
    assert wrong == []
