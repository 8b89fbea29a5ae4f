"""SaveLatent and LoadLatent (ComfyUI's nodes.py): a LATENT as a safetensors `.latent` file.

A saved file holds `latent_tensor` and an empty `latent_format_version_0` marker, with the prompt and
extra_pnginfo as JSON strings in its metadata; it is named and numbered by the same writer as SaveImage's
PNGs (counter, receipts, retention). A file without the marker predates it and stored latents scaled by
SD1's 0.18215, which loading undoes."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError

from comfymesh.catalog import INPUT_LATENTS
from comfymesh.catalog.files import FileRefused, open_inside, split_image_name
from comfymesh.catalog.schema import Combo, Hidden, Link, Output, Source, String
from comfymesh.contracts.errors import NodeInputError
from comfymesh.diffusion.nodes.failures import node
from comfymesh.diffusion.nodes.registry import nodes
from comfymesh.outputs import OutputIdentity, expand_tokens, resolve_target, write_files
from comfymesh.outputs._naming import BadFilenamePrefix
from comfymesh.stage.node import NodeContext

VERSION_KEY = "latent_format_version_0"
OLD_FORMAT_SCALE = 0.18215


def latent_file_bytes(samples: torch.Tensor, prompt: Any | None, extra_pnginfo: dict[str, Any] | None) -> bytes:
    """The safetensors bytes SaveLatent writes (metadata: `prompt` ("" without one), then each extra key)."""
    metadata = {"prompt": json.dumps(prompt) if prompt is not None else ""}
    for key, value in (extra_pnginfo or {}).items():
        metadata[key] = json.dumps(value)
    tensors = {"latent_tensor": samples.detach().cpu().contiguous(), VERSION_KEY: torch.tensor([])}
    return safetensors.torch.save(tensors, metadata=metadata)


def read_latent_file(data: bytes) -> torch.Tensor:
    """The latent a `.latent` file holds, float32, unscaled for a file without the version marker."""
    tensors = safetensors.torch.load(data)
    multiplier = 1.0 if VERSION_KEY in tensors else 1.0 / OLD_FORMAT_SCALE
    return tensors["latent_tensor"].float() * multiplier


@nodes.define("SaveLatent", category="_for_testing", output_node=True,
    inputs=[
        Link("samples", "LATENT"),
        String("filename_prefix", "latents/ComfyUI"),
        Hidden("prompt", "PROMPT"),
        Hidden("extra_pnginfo", "EXTRA_PNGINFO"),
    ],
    outputs=[],
)
@node
def save_latent(ctx: NodeContext, samples: dict[str, Any], filename_prefix: str = "ComfyUI") -> tuple[()]:
    # ComfyUI expands the prefix with no image size: %width% / %height% become 0
    expanded = expand_tokens(filename_prefix, width=0, height=0, now=datetime.now())
    try:
        target = resolve_target(ctx.home / "output", expanded)
    except BadFilenamePrefix as exc:
        raise NodeInputError(str(exc), node_id=ctx.node_id) from exc
    data = latent_file_bytes(torch.as_tensor(samples["samples"]), ctx.prompt, ctx.extra_pnginfo)
    saved = write_files([data], ctx.home, target, folder_type="output", extension="latent",
                        identity=OutputIdentity(ctx.job_id, ctx.output_key), files=ctx.files)
    ctx.ui = {"latents": [file.as_ui() for file in saved]}
    return ()


@nodes.define("LoadLatent", category="_for_testing",
    inputs=[Combo("latent", Source(INPUT_LATENTS))],
    outputs=[Output("LATENT")],
)
@node
def load_latent(ctx: NodeContext, latent: str) -> tuple[dict[str, Any]]:
    folder, name = split_image_name(latent)  # `x.latent`, `sub/x.latent` or `x.latent [output]`
    try:
        with open_inside(ctx.home / folder, name) as handle:
            data = handle.read()
    except FileNotFoundError:
        raise NodeInputError(f"Invalid latent file: {latent}", node_id=ctx.node_id) from None
    except FileRefused as exc:
        raise NodeInputError(f"Cannot load {folder}/{name}: {exc}", node_id=ctx.node_id) from None
    try:
        samples = read_latent_file(data)
    except (SafetensorError, KeyError) as exc:
        raise NodeInputError(f"{latent} is not a latent file: {exc}", node_id=ctx.node_id) from None
    return ({"samples": samples},)
