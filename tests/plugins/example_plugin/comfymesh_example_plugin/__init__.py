"""An example comfymesh node plugin: `ExampleSolarize`, run by the imaging stage.

Installing this package is all it takes: the imaging stage finds `nodes` through the `comfymesh.nodes`
entry point at start-up, and the node appears in `/object_info` and runs in prompts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from comfymesh.catalog.schema import Float, Link, NodeSet, Output

nodes = NodeSet("imaging")


@nodes.define("ExampleSolarize", category="image/example", display_name="Solarize (example plugin)",
              description="Inverts every channel value above the threshold.",
              python_module="custom_nodes.comfymesh_example_plugin",
              inputs=[Link("image", "IMAGE"), Float("threshold", 0.5, min=0.0, max=1.0, step=0.01)],
              outputs=[Output("IMAGE")])
def solarize(ctx: Any, image: Any, threshold: float) -> tuple[np.ndarray]:
    pixels = np.asarray(image, dtype=np.float32)
    return (np.where(pixels > threshold, 1.0 - pixels, pixels).astype(np.float32),)
