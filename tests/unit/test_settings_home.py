"""Every setting lives in `Settings`: only the config package reads the environment, nothing writes it
(but the one documented place for third-party libraries' own variables), and every field is documented."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from comfymesh.config import Settings
from comfymesh.config.process_env import LIBRARY_VARIABLES
from comfymesh.config.testing import FaultSwitches

REPO = Path(__file__).resolve().parents[2]
SOURCES = (REPO / "libs", REPO / "services")
CONFIG_PACKAGE = REPO / "libs" / "comfymesh" / "config"
LIBRARY_ENV_MODULE = CONFIG_PACKAGE / "process_env.py"
# still reading the environment on their own, until their migration lands; empty it then
NOT_YET_MIGRATED: tuple[Path, ...] = ()
_ENV_NAMES = {"environ", "getenv", "putenv", "unsetenv", "environb", "getenvb"}
_WRITING_METHODS = {"setdefault", "update", "pop", "popitem", "clear", "__setitem__", "__delitem__"}


def _python_files(*, skip: tuple[Path, ...] = ()) -> Iterator[Path]:
    for root in SOURCES:
        for path in sorted(root.rglob("*.py")):
            if not any(path.is_relative_to(folder) for folder in skip):
                yield path


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{line}"


def _is_os_env(node: ast.AST) -> bool:
    """`os.environ`, `os.getenv`, ... (or the bare name imported from os)."""
    if isinstance(node, ast.Attribute):
        return node.attr in _ENV_NAMES and isinstance(node.value, ast.Name) and node.value.id == "os"
    return isinstance(node, ast.Name) and node.id in _ENV_NAMES


def _env_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = [_where(path, node.lineno) for node in ast.walk(tree)
             if _is_os_env(node) and not isinstance(getattr(node, "ctx", None), ast.Store)]
    found += [f"{_where(path, node.lineno)} (imports it)" for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module == "os"
              and any(alias.name in _ENV_NAMES for alias in node.names)]
    return found


def _env_writes(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    writes = []
    for node in ast.walk(tree):
        targets: list[ast.AST] = []
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign | ast.Delete):
            targets = list(node.targets) if isinstance(node, ast.Assign | ast.Delete) else [node.target]
        if any((isinstance(target, ast.Subscript) and _is_os_env(target.value)) or _is_os_env(target)
               for target in targets):
            writes.append(_where(path, node.lineno))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            func = node.func
            if (func.attr in _WRITING_METHODS and _is_os_env(func.value)) or \
                    (_is_os_env(func) and func.attr in ("putenv", "unsetenv")):
                writes.append(_where(path, node.lineno))
    return writes


def test_only_the_config_package_reads_the_environment() -> None:
    uses = [use for path in _python_files(skip=(CONFIG_PACKAGE, *NOT_YET_MIGRATED)) for use in _env_uses(path)]
    assert uses == [], "read settings through comfymesh.config (get_settings()), not os.environ: " + ", ".join(uses)


def test_nothing_writes_the_environment() -> None:
    writes = [write for path in _python_files() if path != LIBRARY_ENV_MODULE for write in _env_writes(path)]
    assert writes == [], ("nothing may write os.environ (a library's own variable: "
                          "comfymesh.config.process_env.default_library_variable): " + ", ".join(writes))


def test_the_scan_sees_reads_and_writes(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nfrom os import getenv\na = os.environ.get('X')\nb = getenv('Y')\n"
                      "os.environ['Z'] = '1'\nos.environ.setdefault('W', '2')\ndel os.environ['Z']\n"
                      "os.putenv('V', '3')\n")
    assert len(_env_uses(sample)) == 7
    assert len(_env_writes(sample)) == 4
    assert _env_writes(LIBRARY_ENV_MODULE) != []  # the one documented writer is seen, and allowed


def test_library_variables_say_why() -> None:
    assert all(name.isupper() and len(why) > 20 for name, why in LIBRARY_VARIABLES.items())
    assert not any(name.startswith("COMFYMESH_") for name in LIBRARY_VARIABLES)


def test_every_setting_is_documented() -> None:
    undocumented = [name for name, field in Settings.model_fields.items() if not field.description]
    assert undocumented == []
    table = (REPO / "README.md").read_text()
    listed = set(re.findall(r"`COMFYMESH_([A-Z0-9_]+)`", table))
    switches = set(FaultSwitches.model_fields)
    missing = [name for name in Settings.model_fields if name not in switches and name.upper() not in listed]
    assert missing == [], f"add rows for COMFYMESH_{missing} to README.md's configuration table"
    # test-only switches: named as such, each described where they live
    testing_doc = (CONFIG_PACKAGE / "testing.py").read_text()
    assert all(name.startswith("test_") and f"COMFYMESH_{name.upper()}" in testing_doc for name in switches)
