"""Nodes from other Python packages: an entry point in the `comfymesh.nodes` group names a `NodeSet`.

A plugin package declares, in its pyproject.toml:

    [project.entry-points."comfymesh.nodes"]
    my_nodes = "my_package.nodes:nodes"      # a NodeSet, or a function that returns one

and the stage whose name the set carries (`NodeSet("imaging")`) hosts its nodes after a restart. A plugin
that fails to import or declares a node badly is left out with a start-up error naming it; the stage
serves its other nodes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from comfymesh.catalog.schema import ANY_STAGE, DeclarationError, NodeSet

GROUP = "comfymesh.nodes"
log = logging.getLogger("comfymesh.stage.plugins")


@dataclass(frozen=True)
class PluginError:
    plugin: str  # "<entry point name> (<module:attribute>)"
    reason: str

    def __str__(self) -> str:
        return f"node plugin {self.plugin} was not loaded: {self.reason}"


def load_plugins(stage: str, nodes: NodeSet) -> list[PluginError]:
    """Add the nodes of every installed plugin for `stage` to `nodes`; return the plugins left out."""
    errors = []
    for point in sorted(entry_points(group=GROUP), key=lambda p: p.name):
        error = _load_one(point, stage, nodes)
        if error is not None:
            log.error(str(error))
            errors.append(error)
    return errors


def _load_one(point: EntryPoint, stage: str, nodes: NodeSet) -> PluginError | None:
    label = f"{point.name} ({point.value})"
    try:
        loaded = point.load()
        plugin = loaded() if callable(loaded) and not isinstance(loaded, NodeSet) else loaded
    except Exception as exc:  # a plugin's import may fail any way; the stage must still start
        return PluginError(label, f"{type(exc).__name__}: {exc}")
    if not isinstance(plugin, NodeSet):
        return PluginError(label, f"it must name a comfymesh NodeSet, not {type(plugin).__name__}")
    if plugin.stage not in (stage, ANY_STAGE):
        return None  # another stage's nodes
    clashes = sorted(set(plugin.schemas) & set(nodes.schemas))
    if clashes:
        return PluginError(label, f"it declares nodes the stage already has: {', '.join(clashes)}")
    try:
        nodes.extend(plugin)
    except DeclarationError as exc:
        return PluginError(label, str(exc))
    return None


__all__ = ["GROUP", "PluginError", "load_plugins"]
