"""Node definitions: inputs, outputs, defaults, limits and the stage that runs each node.

The single source for validation, `/object_info` and dispatch. Entries follow ComfyUI 0.8.0's
`/object_info` shapes (nodes.json) plus a `stage` field; file lists are read at request time.
"""

from __future__ import annotations

import copy
import json
import mimetypes
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Sampler and scheduler names the diffusion stage implements, in ComfyUI's order.
SAMPLERS = ["euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2s_ancestral",
            "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun",
            "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ddim", "uni_pc",
            "uni_pc_bh2"]
SCHEDULERS = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
              "linear_quadratic", "kl_optimal"]
# Output nodes run in whichever stage produced their input (no image crosses stages to be saved).
ANY_STAGE = "any"
MODEL_FOLDERS = {"checkpoints": (".safetensors",), "loras": (".safetensors",), "vae": (".safetensors",)}

_ENTRIES: dict[str, dict[str, Any]] = json.loads((Path(__file__).parent / "nodes.json").read_text())
# placeholders in nodes.json replaced by live lists
_DYNAMIC = {
    "<files in models/checkpoints>": ("model", "checkpoints"),
    "<files in models/loras>": ("model", "loras"),
    "pixel_space": ("model", "vae"),
    "example.png": ("input", ""),
    "<SAMPLERS>": ("const", "samplers"),
    "<SCHEDULERS>": ("const", "schedulers"),
}


@dataclass(frozen=True)
class InputSpec:
    """One declared input: a link type (`IMAGE`, `MODEL`, ...) or a widget (`INT`, `FLOAT`, `COMBO`, ...)."""

    name: str
    type: str
    options: dict[str, Any]
    required: bool

    @property
    def is_widget(self) -> bool:
        return self.type in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


@dataclass(frozen=True)
class NodeDef:
    """What the orchestrator needs to validate and route one node class."""

    name: str
    stage: str
    inputs: dict[str, InputSpec]
    outputs: tuple[str, ...]
    output_node: bool


def _input_type(spec: list[Any]) -> str:
    return "COMBO" if isinstance(spec[0], list) else str(spec[0])


class Catalog:
    """Node definitions, with file lists read from the data root when asked."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.nodes: dict[str, NodeDef] = {}
        for name, entry in _ENTRIES.items():
            inputs: dict[str, InputSpec] = {}
            for section in ("required", "optional"):
                for input_name, spec in entry["input"].get(section, {}).items():
                    options = spec[1] if len(spec) > 1 else {}
                    inputs[input_name] = InputSpec(input_name, _input_type(spec), options, section == "required")
            self.nodes[name] = NodeDef(name, entry["stage"], inputs, tuple(entry["output"]),
                                       bool(entry["output_node"]))
        # per model folder: the listing and the mtime of every directory it walked
        self._listings: dict[str, tuple[dict[str, int], list[str]]] = {}

    def get(self, class_type: str) -> NodeDef | None:
        return self.nodes.get(class_type)

    def model_files(self, folder: str) -> list[str]:
        """Model files in models/<folder>, relative names with '/' separators, sorted.

        Every submit validates against this list, so it is kept and only walked again when a directory
        it walked changed (adding, removing or renaming an entry changes its directory's mtime)."""
        cached = self._listings.get(folder)
        if cached is not None and _unchanged(cached[0]):
            return list(cached[1])
        root = self.home / "models" / folder
        suffixes = MODEL_FOLDERS.get(folder, (".safetensors",))
        found, mtimes = [], {}
        for folder_path, _, names in os.walk(root, followlinks=True):
            mtimes[folder_path] = _mtime_ns(folder_path)
            relative = os.path.relpath(folder_path, root).replace(os.sep, "/")
            for name in names:
                if os.path.splitext(name)[1].lower() in suffixes and os.path.isfile(os.path.join(folder_path, name)):
                    found.append(name if relative == "." else f"{relative}/{name}")
        mtimes.setdefault(str(root), _mtime_ns(str(root)))  # a folder created later shows up too
        # mtimes tick with the kernel's coarse clock (ms): a directory changed just now could change
        # again within the same tick unseen, so such a listing is not kept
        found.sort()
        if max(mtimes.values()) < time.time_ns() - _SETTLED_NS:
            self._listings[folder] = (mtimes, list(found))
        return found

    def input_images(self) -> list[str]:
        """Image files directly in the input folder (what LoadImage lists)."""
        root = self.home / "input"
        if not root.is_dir():
            return []
        return sorted(path.name for path in root.iterdir() if path.is_file()
                      and (mimetypes.guess_type(path.name)[0] or "").startswith("image/"))

    def choices(self, class_type: str, input_name: str) -> list[Any]:
        """The live COMBO list of one input."""
        spec = _ENTRIES[class_type]["input"]
        raw = (spec.get("required", {}) | spec.get("optional", {}))[input_name][0]
        return self._resolve(raw)

    def _resolve(self, raw: list[Any]) -> list[Any]:
        if not raw or raw[0] not in _DYNAMIC:
            return list(raw)
        kind, what = _DYNAMIC[raw[0]]
        if kind == "model":
            return self.model_files(what)
        if kind == "input":
            return self.input_images()
        return list(SAMPLERS if what == "samplers" else SCHEDULERS)

    def object_info(self, class_type: str | None = None) -> dict[str, Any]:
        """ComfyUI `/object_info` entries with live file lists (all nodes, or one; {} when unknown)."""
        names = [class_type] if class_type else list(_ENTRIES)
        info: dict[str, Any] = {}
        for name in names:
            if name not in _ENTRIES:
                continue
            entry = copy.deepcopy(_ENTRIES[name])
            entry.pop("stage")
            for section in ("required", "optional"):
                for spec in entry["input"].get(section, {}).values():
                    if isinstance(spec[0], list):
                        spec[0] = self._resolve(spec[0])
            info[name] = entry
        return info


_SETTLED_NS = 2_000_000_000


def _mtime_ns(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1  # absent: its appearance is a change


def _unchanged(mtimes: dict[str, int]) -> bool:
    return all(_mtime_ns(path) == mtime for path, mtime in mtimes.items())


__all__ = ["ANY_STAGE", "SAMPLERS", "SCHEDULERS", "Catalog", "InputSpec", "NodeDef"]
