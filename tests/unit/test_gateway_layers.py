"""The gateway's layers, read from its source: routers do HTTP and call the services; only the gRPC client knows
protobuf; nothing imports the job store or a stage."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.mesh import REPO

GATEWAY = REPO / "services" / "comfymesh" / "gateway"
# the other services (stages, orchestrator, CLI), the job store and the stage runtime
FORBIDDEN = ("comfymesh.jobs", "comfymesh.stage",
             *(f"comfymesh.{p.name}" for p in (REPO / "services" / "comfymesh").iterdir()
               if p.is_dir() and p.name not in ("gateway", "__pycache__")))
GRPC_CLIENT = GATEWAY / "client.py"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO / "services").with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports, `from x import y` counted as both x and x.y (y may be a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def is_router(path: Path) -> bool:
    return any(isinstance(node, ast.Call) and getattr(node.func, "id", "") == "APIRouter"
               for node in ast.walk(ast.parse(path.read_text())))


SOURCES = sorted(GATEWAY.rglob("*.py"))
ROUTERS = {module_name(path) for path in SOURCES if is_router(path)}


def test_the_scan_sees_the_gateway() -> None:
    assert {"comfymesh.gateway.api_v1", "comfymesh.gateway.comfy.queue", "comfymesh.gateway.comfy.ws"} <= ROUTERS
    assert "comfymesh.imaging" in FORBIDDEN and "comfymesh.diffusion" in FORBIDDEN


def test_the_gateway_imports_neither_the_job_store_nor_a_stage() -> None:
    offending = {module_name(path): sorted(m for m in imports(path) if m.startswith(FORBIDDEN)) for path in SOURCES}
    assert {module: found for module, found in offending.items() if found} == {}


def test_nothing_the_gateway_loads_brings_them_in() -> None:
    """Not even through a library: the modules loaded by starting the gateway's app."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, comfymesh.gateway.__main__, comfymesh.gateway.app; print(*sys.modules)"],
        capture_output=True, text=True, check=True, cwd=REPO).stdout.split()
    assert sorted(m for m in loaded if m.startswith(FORBIDDEN) or m in ("torch", "wand")) == []


def test_only_the_grpc_client_speaks_protobuf() -> None:
    def protobuf(module: str) -> bool:
        return module.startswith(("comfymesh.v1", "grpc", "google.protobuf")) or module.endswith(("_pb2", "_pb2_grpc"))

    speaking = {module_name(path) for path in SOURCES if any(protobuf(m) for m in imports(path))}
    assert speaking == {module_name(GRPC_CLIENT)}


def test_routers_import_nothing_from_another_router() -> None:
    borrowed = {module_name(path): sorted(imports(path) & (ROUTERS - {module_name(path)}))
                for path in SOURCES if module_name(path) in ROUTERS}
    assert {router: found for router, found in borrowed.items() if found} == {}
