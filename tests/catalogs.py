"""The catalog a mesh of both built-in stages serves, built in-process from their node declarations."""

from __future__ import annotations

from pathlib import Path

from comfymesh.catalog import Catalog
from comfymesh.catalog.schema import NodeSet
from comfymesh.outputs import output_nodes


def builtin_nodes() -> NodeSet:
    from comfymesh.diffusion.nodes import nodes as diffusion
    from comfymesh.imaging.nodes import nodes as imaging

    merged = NodeSet("any")
    for nodes in (output_nodes, imaging, diffusion):
        merged.extend(nodes)
    return merged


def builtin_catalog(home: Path) -> Catalog:
    return Catalog(home, builtin_nodes().object_info())
