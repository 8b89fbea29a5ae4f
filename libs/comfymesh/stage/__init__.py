"""The stage runtime: a gRPC Stage servicer that runs groups of nodes from a node registry."""

from comfymesh.stage.node import NodeContext, NodeImpl

__all__ = ["NodeContext", "NodeImpl"]
