"""VAE nodes: decode latents to images and encode images to latents, whole or in tiles."""

from __future__ import annotations

from typing import Any

import torch

from comfymesh.catalog.schema import Input, Int, Link, Output
from comfymesh.contracts.errors import ModelError, NodeInputError
from comfymesh.contracts.handles import HandleKind, ModelHandle
from comfymesh.diffusion.fast.decoder import FastDecoder
from comfymesh.diffusion.latents import pixel_space, tiled, vae_codec
from comfymesh.diffusion.models import wan_vae
from comfymesh.diffusion.models.cache import get_model_cache
from comfymesh.diffusion.nodes.failures import node
from comfymesh.diffusion.nodes.handles import checkpoint_of, expect_handle
from comfymesh.diffusion.nodes.model_files import resolve_file
from comfymesh.diffusion.nodes.registry import nodes
from comfymesh.stage.node import NodeContext


def vae_of(ctx: NodeContext, handle: ModelHandle) -> tuple[torch.nn.Module, FastDecoder | None]:
    """The VAE of a handle and, on the fast path, its compiled decoder."""
    handle = expect_handle(ctx, handle, HandleKind.VAE)
    if pixel_space.is_pixel_space(handle):
        raise NodeInputError("the pixel_space VAE serves VAEDecode and VAEEncode only", node_id=ctx.node_id)
    if "file" in handle:
        cache = get_model_cache()
        digest, file_vae = cache.vae_file(resolve_file(ctx, "vae", handle["file"], handle["digest"]))
        if digest != handle["digest"]:
            raise ModelError(f"VAE {handle['file']} changed on disk since it was loaded (expected sha256 "
                             f"{handle['digest']}, got {digest})", node_id=ctx.node_id)
        # the Wan VAE (Qwen-Image) decodes frame by frame with a cache of past frames: eagerly
        return file_vae, None if wan_vae.is_wan_vae(file_vae) else cache.vae_file_decoder(digest, file_vae)
    ckpt = checkpoint_of(ctx, handle)
    return ckpt.vae(), get_model_cache().decoder(ckpt)


@nodes.define("VAEDecode", category="latent", display_name="VAE Decode", description="Decodes latent images back into pixel space images.",
    inputs=[
        Link("samples", "LATENT", tooltip="The latent to be decoded."),
        Link("vae", "VAE", tooltip="The VAE model used for decoding the latent."),
    ],
    outputs=[Output("IMAGE")],
    output_tooltips=["The decoded image."],
)
@node
def vae_decode(ctx: NodeContext, samples: dict[str, Any], vae: ModelHandle) -> tuple[torch.Tensor]:
    if pixel_space.is_pixel_space(vae):
        return (pixel_space.decode(torch.as_tensor(samples["samples"])),)
    module, decoder = vae_of(ctx, vae)
    if wan_vae.is_wan_vae(module):  # Qwen-Image's VAE: 5-D latents, frames laid out as images
        return (wan_vae.decode(module, torch.as_tensor(samples["samples"])),)
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
    if pixel_space.is_pixel_space(vae):
        return ({"samples": pixel_space.encode(torch.as_tensor(pixels))},)
    module = vae_of(ctx, vae)[0]
    codec = wan_vae if wan_vae.is_wan_vae(module) else vae_codec  # the Wan VAE encodes a batch as one clip
    return ({"samples": codec.encode(module, torch.as_tensor(pixels))},)


def _temporal(what: str) -> list[Input]:
    return [Int("temporal_size", 64, min=8, max=4096, step=4,
                tooltip=f"Only used for video VAEs: Amount of frames to {what} at a time."),
            Int("temporal_overlap", 8, min=4, max=4096, step=4,
                tooltip="Only used for video VAEs: Amount of frames to overlap.")]


@nodes.define("VAEDecodeTiled", category="_for_testing", display_name="VAE Decode (Tiled)",
    inputs=[
        Link("samples", "LATENT"),
        Link("vae", "VAE"),
        Int("tile_size", 512, min=64, max=4096, step=32),
        Int("overlap", 64, min=0, max=4096, step=32),
        *_temporal("decode"),
    ],
    outputs=[Output("IMAGE")],
)
@node
def vae_decode_tiled(ctx: NodeContext, samples: dict[str, Any], vae: ModelHandle, tile_size: int, overlap: int = 64,
                     temporal_size: int = 64, temporal_overlap: int = 8) -> tuple[torch.Tensor]:
    # the temporal sizes only concern video VAEs; an overlap over a quarter of the tile is cut to a quarter
    module = _untiled_wan(ctx, vae_of(ctx, vae)[0])
    if tile_size < overlap * 4:
        overlap = tile_size // 4
    factor = vae_codec.spatial_factor(module)
    return (tiled.decode_tiled(module, torch.as_tensor(samples["samples"]), tile_size // factor, overlap // factor),)


@nodes.define("VAEEncodeTiled", category="_for_testing", display_name="VAE Encode (Tiled)",
    inputs=[
        Link("pixels", "IMAGE"),
        Link("vae", "VAE"),
        Int("tile_size", 512, min=64, max=4096, step=64),
        Int("overlap", 64, min=0, max=4096, step=32),
        *_temporal("encode"),
    ],
    outputs=[Output("LATENT")],
)
@node
def vae_encode_tiled(ctx: NodeContext, pixels: Any, vae: ModelHandle, tile_size: int, overlap: int = 64,
                     temporal_size: int = 64, temporal_overlap: int = 8) -> tuple[dict[str, Any]]:
    module = _untiled_wan(ctx, vae_of(ctx, vae)[0])
    return ({"samples": tiled.encode_tiled(module, torch.as_tensor(pixels), tile_size, overlap)},)


def _untiled_wan(ctx: NodeContext, module: torch.nn.Module) -> torch.nn.Module:
    # ComfyUI tiles the Wan VAE in three dimensions; this stage's tiling is 2-D
    if wan_vae.is_wan_vae(module):
        raise NodeInputError("tiled VAE decoding and encoding of Qwen-Image's VAE (Wan 2.1) is not supported yet: "
                             "use VAEDecode / VAEEncode", node_id=ctx.node_id)
    return module
