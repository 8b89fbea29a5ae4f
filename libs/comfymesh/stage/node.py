"""The contract between a stage runtime and the node implementations it hosts.

A node implementation is a plain function `impl(ctx, **inputs) -> tuple` whose inputs are the node's
resolved values (literals, or tensors read from the artifact store) and whose tuple matches the
node's declared outputs. Output nodes return `()` and set `ctx.ui`.

The runtime refuses any IMAGE, MASK or LATENT output over the server's per-node limits before the next
node runs; a node whose output size is known before its work (a file's header, a scale factor) calls
`ctx.check_size` first, so that the work over the limit is never done.

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

from comfymesh.catalog.model_folders import ModelFolders
from comfymesh.contracts.errors import InterruptedError_
from comfymesh.files import FilesStore
from comfymesh.graph.limits import OutputLimits


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
    # set by the stage runtime; a context made by hand (tests, tools) has no limits
    limits: OutputLimits | None = None
    # set by the stage runtime (with the extra model paths); a context made by hand reads <home>/models only
    model_folders: ModelFolders | None = None
    # which call of the node this is, when it runs once per item of a list input (0 for the first or only)
    call_index: int = 0
    # where outputs are saved (COMFYMESH_FILES_URL); None: the data home's folders
    files: FilesStore | None = None

    @property
    def output_key(self) -> str:
        """What names this call's saved files for a retry (a node run over a list saves each call's own)."""
        return self.node_id if self.call_index == 0 else f"{self.node_id}#{self.call_index}"

    @property
    def models(self) -> ModelFolders:
        """The model-folder registry the node resolves model files in."""
        return self.model_folders or ModelFolders(self.home, {})

    def check_cancelled(self) -> None:
        """Raise if the job was cancelled; long loops call this once per step."""
        if self.is_cancelled():
            raise InterruptedError_("Processing interrupted", node_id=self.node_id)

    def check_size(self, width: int, height: int, batch: int) -> None:
        """Refuse, before the work, an output of width x height x batch images over the per-node limits."""
        if self.limits is not None:
            self.limits.check(self.node_id, self.class_type, width, height, batch)


NodeImpl = Callable[..., tuple[Any, ...]]
