"""The wrapper every diffusion node function gets: failures carry the node id, and running out of GPU
memory becomes a retryable ResourceExhaustedError."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from comfymesh.contracts.errors import ComfymeshError, ResourceExhaustedError
from comfymesh.stage.node import NodeContext, NodeImpl


def node(fn: Callable[..., tuple[Any, ...]]) -> NodeImpl:
    """Give every failure the node id, and classify out-of-memory as retryable elsewhere."""

    @functools.wraps(fn)
    def wrapper(ctx: NodeContext, **inputs: Any) -> tuple[Any, ...]:
        try:
            return fn(ctx, **inputs)
        except ComfymeshError as exc:
            if not exc.node_id:
                exc.node_id = ctx.node_id
            raise
        except torch.cuda.OutOfMemoryError as exc:
            raise ResourceExhaustedError(f"out of GPU memory: {exc}", node_id=ctx.node_id) from exc

    return wrapper
