"""The contract between a stage runtime and the node implementations it hosts.

A node implementation is a plain function `impl(ctx, **inputs) -> tuple` whose inputs are the node's
resolved values (literals, or tensors read from the artifact store) and whose tuple matches the
node's declared outputs. Output nodes return `()` and set `ctx.ui`.

Python-side value forms (what `inputs` hold and what impls return):
- IMAGE: float32 array [B, H, W, C] in [0, 1] (numpy or torch; the runtime stores either)
- MASK: float32 array [B, H, W]
- LATENT: dict {"samples": array [B, 4, h, w], optional "noise_mask": array, "batch_index": list[int]}
- CONDITIONING: list of [array [1, T, D], dict of extras (arrays or JSON values)]
- MODEL / CLIP / VAE: a JSON-able dict handle, resolved by the diffusion stage's model cache
- INT / FLOAT / STRING / BOOLEAN / COMBO: Python literals
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfymesh.errors import InterruptedError_


@dataclass
class NodeContext:
    """What a running node may know and do besides its inputs."""

    job_id: str
    node_id: str
    class_type: str
    home: Path
    prompt: dict[str, Any] | None = None
    extra_pnginfo: dict[str, Any] | None = None
    report_progress: Callable[[int, int], None] = lambda value, maximum: None
    # (image bytes, format name such as "JPEG") of a small preview
    report_preview: Callable[[bytes, str], None] = lambda data, fmt: None
    is_cancelled: Callable[[], bool] = lambda: False
    ui: dict[str, Any] | None = None
    attempt_key: str = ""
    extras: dict[str, Any] = field(default_factory=dict)

    def check_cancelled(self) -> None:
        """Raise if the job was cancelled; long loops call this once per step."""
        if self.is_cancelled():
            raise InterruptedError_("Processing interrupted", node_id=self.node_id)


NodeImpl = Callable[..., tuple[Any, ...]]
