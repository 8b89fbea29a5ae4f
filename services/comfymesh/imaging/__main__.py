"""`python -m comfymesh.imaging`: the ImageMagick stage (LoadImage, scale, blur, sharpen, crop, ...)."""

from __future__ import annotations

from pathlib import Path

from comfymesh.config import get_settings
from comfymesh.stage.node import NodeImpl
from comfymesh.stage.server import stage_main


def _nodes() -> dict[str, NodeImpl]:
    from comfymesh.imaging.nodes import nodes

    return nodes.impls


def main() -> None:
    stage_main("imaging", _nodes, Path(__file__).parent, get_settings().imaging_replicas.split(",")[0])


if __name__ == "__main__":
    main()
