"""List nodes (ComfyUI's `nodes_rebatch`): images regrouped into a list of batches, which the nodes it feeds
run over once per item (see `comfymesh.stage.lists`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from comfymesh.catalog.schema import Int, Link, Output
from comfymesh.contracts.errors import NodeInputError
from comfymesh.imaging.nodes import define_v3
from comfymesh.stage.node import NodeContext


@define_v3("RebatchImages", "nodes_rebatch", "image/batch", display_name="Rebatch Images",
           inputs=[Link("images", "IMAGE", {}), Int("batch_size", 1, min=1, max=4096)],
           outputs=[Output("IMAGE", is_list=True)], input_is_list=True)
def rebatch_images(ctx: NodeContext, images: list[Any], batch_size: list[int]) -> tuple[list[np.ndarray]]:
    """RebatchImages: every image of every input batch, in order, regrouped into batches of `batch_size`
    (the last one shorter); a list input, so `batch_size` comes as a list too (its first item counts)."""
    size = int(batch_size[0])
    frames = [np.asarray(batch)[index:index + 1] for batch in images for index in range(np.asarray(batch).shape[0])]
    shapes = {frame.shape[1:] for frame in frames}
    if len(shapes) > 1:
        raise NodeInputError(f"Rebatch Images needs images of one size, got {sorted(shapes)}", node_id=ctx.node_id)
    return ([np.concatenate(frames[start:start + size]) for start in range(0, len(frames), size)],)
