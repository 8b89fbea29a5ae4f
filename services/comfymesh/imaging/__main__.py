"""`python -m comfymesh.imaging`: the ImageMagick stage (LoadImage, scale, blur, sharpen, crop, ...)."""

from __future__ import annotations

from pathlib import Path

from comfymesh.catalog.schema import NodeSet
from comfymesh.config import get_settings
from comfymesh.stage.server import stage_main


def _nodes() -> NodeSet:
    from comfymesh.imaging import list_nodes  # noqa: F401  (declares into `nodes` as it is imported)
    from comfymesh.imaging.nodes import nodes

    return nodes


def main() -> None:
    stage_main("imaging", _nodes, Path(__file__).parent, get_settings().imaging_replicas.split(",")[0])


if __name__ == "__main__":
    main()
