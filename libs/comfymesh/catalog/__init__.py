"""The node catalog: what every node takes and makes, and which stage runs it, as the stages declared it.

Stages declare their nodes beside the functions that run them (`comfymesh.catalog.schema`) and
advertise them through Describe; the orchestrator's catalog merges what each stage advertises. Choices
read from the data root (model files, input images) are resolved whenever they are asked for.
"""

from __future__ import annotations

import copy
import mimetypes
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from comfymesh.catalog.files import resolve_image_name
from comfymesh.catalog.model_folders import ModelFolders
from comfymesh.catalog.schema import ALWAYS_CHANGED_KEY, ANY_STAGE, INPUT_IS_LIST_KEY, SOURCE_KEY, WIDGET_TYPES

if TYPE_CHECKING:
    from comfymesh.files import FilesStore

# a Source naming LoadImage's list of input images, one naming LoadLatent's .latent files of the input
# folder; every other source is `models/<folder>`
INPUT_IMAGES = "input/images"
INPUT_LATENTS = "input/latents"
MODELS_PREFIX = "models/"
VAE_FILES = "models/vae"
PIXEL_SPACE_VAE = "pixel_space"  # VAELoader's identity VAE of pixel-space models (Chroma Radiance)


@dataclass(frozen=True)
class InputSpec:
    """One declared input: a link type (`IMAGE`, `MODEL`, ...) or a widget (`INT`, `FLOAT`, `COMBO`, ...)."""

    name: str
    type: str
    options: dict[str, Any]
    required: bool
    source: str | None = None  # where a COMBO's choices come from, when they are files

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES


@dataclass(frozen=True)
class NodeDef:
    """What the orchestrator needs to validate and route one node class."""

    name: str
    stage: str
    inputs: dict[str, InputSpec]
    outputs: tuple[str, ...]
    output_node: bool
    # ComfyUI's execution flags: list outputs and inputs (map over lists), and a result that depends on more
    # than the inputs (IS_CHANGED always "changed": never served from cache)
    output_is_list: tuple[bool, ...] = ()
    input_is_list: bool = False
    always_changed: bool = False

    @property
    def lazy_inputs(self) -> frozenset[str]:
        """Inputs evaluated only when the node asks for them (ComfyUI's `lazy` option)."""
        return frozenset(name for name, spec in self.inputs.items() if spec.options.get("lazy"))


def _input_spec(name: str, spec: Any, required: bool) -> InputSpec:
    head, options = spec[0], (spec[1] if len(spec) > 1 else {})
    if head == "COMBO":  # a V3 node's COMBO: a file list is a marker among its options
        listed = options.get("options", [])
        source = listed[0].get(SOURCE_KEY) if len(listed) == 1 and isinstance(listed[0], dict) else None
        return InputSpec(name, "COMBO", options, required, source)
    if not isinstance(head, list):
        return InputSpec(name, str(head), options, required)
    source = head[0].get(SOURCE_KEY) if len(head) == 1 and isinstance(head[0], dict) else None
    return InputSpec(name, "COMBO", options, required, source)


def node_def(name: str, entry: Mapping[str, Any]) -> NodeDef:
    """A NodeDef from an `/object_info` entry that carries its `stage` (the form Describe sends)."""
    inputs: dict[str, InputSpec] = {}
    for section in ("required", "optional"):
        for input_name, spec in entry["input"].get(section, {}).items():
            inputs[input_name] = _input_spec(input_name, spec, section == "required")
    return NodeDef(name, str(entry["stage"]), inputs, tuple(entry["output"]), bool(entry["output_node"]),
                   tuple(bool(flag) for flag in entry.get("output_is_list", ())), bool(entry.get(INPUT_IS_LIST_KEY)),
                   bool(entry.get(ALWAYS_CHANGED_KEY)))


class Catalog:
    """Node definitions (entries in `/object_info` form with a `stage`), with file lists read when asked."""

    def __init__(self, home: Path, entries: Mapping[str, Mapping[str, Any]] | None = None,
                 folders: ModelFolders | None = None, files: FilesStore | None = None) -> None:
        self.home = home
        # a shared (s3://) files store lists the input folder instead of <home>/input
        self.files = files if files is not None and not files.local else None
        self.folders = folders or ModelFolders(home, {})
        self._entries: dict[str, Mapping[str, Any]] = {}
        self.nodes: dict[str, NodeDef] = {}
        # per model folder: the listing and the mtime of every directory it walked
        self._listings: dict[str, tuple[dict[str, int], list[str]]] = {}
        self.update(entries or {})

    def update(self, entries: Mapping[str, Mapping[str, Any]]) -> None:
        """Add or replace node entries (a stage described itself, perhaps with new code)."""
        for name, entry in entries.items():
            self.nodes[name] = node_def(name, entry)
            self._entries[name] = entry

    def replace(self, entries: Mapping[str, Mapping[str, Any]]) -> None:
        """Serve exactly these node entries from now on."""
        self.nodes, self._entries = {}, {}
        self.update(entries)

    def get(self, class_type: str) -> NodeDef | None:
        return self.nodes.get(class_type)

    def model_files(self, folder: str) -> list[str]:
        """Accepted files of a model folder, relative names with '/' separators, sorted.

        Every submit validates against this list, so it is kept and only walked again when a directory
        it walked changed (adding, removing or renaming an entry changes its directory's mtime). A remote
        models store (s3://) is listed on every ask: another host may have added a file."""
        if self.folders.remote is not None:
            return sorted({name for _, names in self.folders.walk(folder) for name in names})
        cached = self._listings.get(folder)
        if cached is not None and _unchanged(cached[0]):
            return list(cached[1])
        found: set[str] = set()
        mtimes: dict[str, int] = {}
        for root in self.folders.roots(folder):
            mtimes[str(root)] = _mtime_ns(str(root))  # a folder created later shows up too
        for directory, names in self.folders.walk(folder):
            mtimes[directory] = _mtime_ns(directory)
            found.update(names)
        listing = sorted(found)
        # mtimes tick with the kernel's coarse clock (ms): a directory changed just now could change
        # again within the same tick unseen, so such a listing is not kept
        if max(mtimes.values(), default=0) < time.time_ns() - _SETTLED_NS:
            self._listings[folder] = (mtimes, list(listing))
        return listing

    @staticmethod
    def _stored_inputs(files: FilesStore) -> list[str]:
        """The names directly in a shared store's input folder."""
        return [entry.key.removeprefix("input/") for entry in files.entries("input") if entry.key.count("/") == 1]

    def input_images(self) -> list[str]:
        """Image files directly in the input folder (what LoadImage lists)."""
        if self.files is not None:
            return sorted(name for name in self._stored_inputs(self.files)
                          if (mimetypes.guess_type(name)[0] or "").startswith("image/"))
        root = self.home / "input"
        if not root.is_dir():
            return []
        return sorted(path.name for path in root.iterdir() if path.is_file()
                      and (mimetypes.guess_type(path.name)[0] or "").startswith("image/"))

    def input_latents(self) -> list[str]:
        """`.latent` files directly in the input folder (what LoadLatent lists), sorted as ComfyUI sorts."""
        if self.files is not None:
            return sorted(name for name in self._stored_inputs(self.files) if name.endswith(".latent"))
        root = self.home / "input"
        if not root.is_dir():
            return []
        return sorted(path.name for path in root.iterdir() if path.is_file() and path.name.endswith(".latent"))

    def choices(self, class_type: str, input_name: str) -> list[Any]:
        """The live COMBO list of one input."""
        spec = self.nodes[class_type].inputs[input_name]
        if spec.source is not None:
            return self._source(spec.source)
        entry = self._entries[class_type]["input"]
        head, *options = (entry.get("required", {}) | entry.get("optional", {}))[input_name]
        if head == "COMBO":  # a V3 node's form: the choices are among the options
            return list(options[0].get("options", [])) if options else []
        return list(head)

    def file_of(self, class_type: str, input_name: str, value: object) -> Path | None:
        """The existing file an input's value names (a model file, an input image), or None."""
        definition = self.nodes.get(class_type)
        spec = definition.inputs.get(input_name) if definition else None
        if spec is None or spec.source is None or not isinstance(value, str):
            return None
        if spec.source in (INPUT_IMAGES, INPUT_LATENTS):  # both take `name [input|output|temp]`
            path = resolve_image_name(self.home, value)
            return path if path is not None and path.is_file() else None
        if self.folders.remote is not None:
            return None  # no local file: `model_version` tells a change instead (nothing is fetched here)
        return self.folders.resolve(spec.source.removeprefix(MODELS_PREFIX), value)

    def model_version(self, class_type: str, input_name: str, value: object) -> str | None:
        """The version token of the remote model file an input's value names (None: local, or no model file)."""
        definition = self.nodes.get(class_type)
        spec = definition.inputs.get(input_name) if definition else None
        if self.folders.remote is None or spec is None or spec.source is None or not isinstance(value, str) \
                or not spec.source.startswith(MODELS_PREFIX):
            return None
        return self.folders.version(spec.source.removeprefix(MODELS_PREFIX), value)

    def _source(self, source: str) -> list[Any]:
        if source == INPUT_IMAGES:
            return self.input_images()
        if source == INPUT_LATENTS:
            return self.input_latents()
        if source == VAE_FILES:  # ComfyUI's VAELoader lists the pixel-space "VAE" after the files
            return [*self.model_files("vae"), PIXEL_SPACE_VAE]
        return self.model_files(source.removeprefix(MODELS_PREFIX))

    def object_info(self, class_type: str | None = None) -> dict[str, Any]:
        """ComfyUI `/object_info` entries with live file lists (all nodes, or one; {} when unknown)."""
        names = [class_type] if class_type else list(self._entries)
        info: dict[str, Any] = {}
        for name in names:
            if name not in self._entries:
                continue
            entry = copy.deepcopy(dict(self._entries[name]))
            entry.pop("stage", None)
            entry.pop(ALWAYS_CHANGED_KEY, None)
            entry.pop(INPUT_IS_LIST_KEY, None)
            for input_name, spec in self.nodes[name].inputs.items():
                if spec.source is not None:
                    section = "required" if spec.required else "optional"
                    declared = entry["input"][section][input_name]
                    if declared[0] == "COMBO":
                        declared[1]["options"] = self._source(spec.source)
                    else:
                        declared[0] = self._source(spec.source)
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


__all__ = ["ANY_STAGE", "INPUT_IMAGES", "INPUT_LATENTS", "Catalog", "InputSpec", "NodeDef", "node_def"]
