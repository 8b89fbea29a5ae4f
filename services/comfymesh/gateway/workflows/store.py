"""Saved workflows, one JSON file each in `<home>/workflows/`: small, readable, and kept across restarts.

A name is the path segment of the workflow's endpoint, so it is a slug; a file is replaced atomically
(written beside it, then renamed), so a crash never leaves half a workflow.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)
FOLDER = "workflows"


def valid_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name))


class WorkflowStore:
    def __init__(self, home: Path) -> None:
        self.folder = home / FOLDER

    def _path(self, name: str) -> Path:
        if not valid_name(name):
            raise ValueError(f"{name!r} is not a workflow name: 1 to 64 of a-z 0-9 _ -, starting with a letter or digit")
        return self.folder / f"{name}.json"

    def put(self, name: str, record: dict[str, Any]) -> None:
        path = self._path(name)
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=self.folder, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(record, handle, indent=1, sort_keys=True)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def get(self, name: str) -> dict[str, Any] | None:
        if not valid_name(name):
            return None
        try:
            record = json.loads(self._path(name).read_text())
        except FileNotFoundError:
            return None
        return record if isinstance(record, dict) else None

    def delete(self, name: str) -> bool:
        if not valid_name(name):
            return False
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            return False
        return True

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(path.stem for path in self.folder.glob("*.json") if valid_name(path.stem))

    def all(self) -> list[dict[str, Any]]:
        return [record for name in self.names() if (record := self.get(name)) is not None]
