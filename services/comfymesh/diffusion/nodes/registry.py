"""The diffusion stage's node set: every node module declares its nodes into it."""

from __future__ import annotations

from comfymesh.catalog.schema import NodeSet

nodes = NodeSet("diffusion")
