"""VAE nodes: decode latents to images and encode images to latents."""

from __future__ import annotations

from typing import Any

import torch

from comfymesh.catalog.schema import Link, Output
from comfymesh.contracts.errors import ModelError
from comfymesh.contracts.handles import HandleKind, ModelHandle
from comfymesh.diffusion.fast.decoder import FastDecoder
from comfymesh.diffusion.latents import vae_codec
from comfymesh.diffusion.models.cache import get_model_cache
from comfymesh.diffusion.nodes.failures import node
from comfymesh.diffusion.nodes.handles import checkpoint_of, expect_handle
from comfymesh.diffusion.nodes.model_files import resolve_file
from comfymesh.diffusion.nodes.registry import nodes
from comfymesh.stage.node import NodeContext


def _vae(ctx: NodeContext, handle: ModelHandle) -> tuple[torch.nn.Module, FastDecoder | None]:
    """The VAE of a handle and, for a checkpoint's VAE on the fast path, its compiled decoder."""
    handle = expect_handle(ctx, handle, HandleKind.VAE)
    if "file" in handle:
        digest, file_vae = get_model_cache().vae_file(resolve_file(ctx, "vae", handle["file"]))
        if digest != handle["digest"]:
            raise ModelError(f"VAE {handle['file']} changed on disk since it was loaded", node_id=ctx.node_id)
        return file_vae, None
    ckpt = checkpoint_of(ctx, handle)
    return ckpt.vae(), get_model_cache().decoder(ckpt)


@nodes.define("VAEDecode", category="latent", display_name="VAE Decode",
    inputs=[
        Link("samples", "LATENT", {}),
        Link("vae", "VAE", {}),
    ],
    outputs=[Output("IMAGE")],
)
@node
def vae_decode(ctx: NodeContext, samples: dict[str, Any], vae: ModelHandle) -> tuple[torch.Tensor]:
    module, decoder = _vae(ctx, vae)
    return (vae_codec.decode(module, torch.as_tensor(samples["samples"]), decoder),)


@nodes.define("VAEEncode", category="latent", display_name="VAE Encode",
    inputs=[
        Link("pixels", "IMAGE"),
        Link("vae", "VAE"),
    ],
    outputs=[Output("LATENT")],
)
@node
def vae_encode(ctx: NodeContext, pixels: Any, vae: ModelHandle) -> tuple[dict[str, Any]]:
    return ({"samples": vae_codec.encode(_vae(ctx, vae)[0], torch.as_tensor(pixels))},)
