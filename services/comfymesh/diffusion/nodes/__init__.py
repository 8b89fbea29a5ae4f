"""Node implementations of the diffusion stage, one module per node group: `NODES[class_type](ctx, **inputs)
-> tuple`. MODEL / CLIP / VAE values are handles (see `handles`) that the model cache resolves."""

from __future__ import annotations

from comfymesh.diffusion.nodes import conditioning, latent, loaders, sampling, vae
from comfymesh.stage.node import NodeImpl

NODES: dict[str, NodeImpl] = {**loaders.NODES, **conditioning.NODES, **latent.NODES, **sampling.NODES, **vae.NODES}

__all__ = ["NODES"]
