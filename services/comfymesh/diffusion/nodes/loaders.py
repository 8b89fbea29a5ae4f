"""Loader nodes: checkpoints, VAE files, LoRAs, and the CLIP layer to stop at."""

from __future__ import annotations

from comfymesh.catalog.schema import Combo, Float, Int, Link, Output, Source
from comfymesh.contracts.errors import NodeInputError
from comfymesh.contracts.handles import HandleKind, ModelHandle, checkpoint_handle, vae_file_handle
from comfymesh.diffusion.models.cache import get_model_cache
from comfymesh.diffusion.nodes.failures import node
from comfymesh.diffusion.nodes.handles import checkpoint_of, expect_handle
from comfymesh.diffusion.nodes.model_files import resolve_file
from comfymesh.diffusion.nodes.registry import nodes
from comfymesh.stage.node import NodeContext


@nodes.define("CheckpointLoaderSimple", category="loaders", display_name="Load Checkpoint",
    description="Loads a diffusion model checkpoint, diffusion models are used to denoise latents.",
    inputs=[
        Combo("ckpt_name", Source("models/checkpoints"), tooltip="The name of the checkpoint (model) to load."),
    ],
    outputs=[Output("MODEL"), Output("CLIP"), Output("VAE")],
    output_tooltips=["The model used for denoising latents.", "The CLIP model used for encoding text prompts.", "The VAE model used for encoding and decoding images to and from latent space."],
)
@node
def checkpoint_loader_simple(ctx: NodeContext, ckpt_name: str) -> tuple[ModelHandle, ModelHandle, ModelHandle]:
    digest = get_model_cache().get(resolve_file(ctx, "checkpoints", ckpt_name)).digest
    return (checkpoint_handle(HandleKind.MODEL, ckpt_name, digest, loras=[]),
            checkpoint_handle(HandleKind.CLIP, ckpt_name, digest, loras=[], stop_at_clip_layer=None),
            checkpoint_handle(HandleKind.VAE, ckpt_name, digest))


@nodes.define("VAELoader", category="loaders", display_name="Load VAE",
    inputs=[
        Combo("vae_name", Source("models/vae")),
    ],
    outputs=[Output("VAE")],
)
@node
def vae_loader(ctx: NodeContext, vae_name: str) -> tuple[ModelHandle]:
    if vae_name in ("pixel_space", "taesd", "taesdxl", "taesd3", "taef1"):
        raise NodeInputError(f"VAE {vae_name!r} is not supported yet", node_id=ctx.node_id)
    digest, _ = get_model_cache().vae_file(resolve_file(ctx, "vae", vae_name))
    return (vae_file_handle(vae_name, digest),)


@nodes.define("LoraLoader", category="loaders", display_name="Load LoRA",
    description="LoRAs are used to modify diffusion and CLIP models, altering the way in which latents are denoised such as applying styles. Multiple LoRA nodes can be linked together.",
    inputs=[
        Link("model", "MODEL", tooltip="The diffusion model the LoRA will be applied to."),
        Link("clip", "CLIP", tooltip="The CLIP model the LoRA will be applied to."),
        Combo("lora_name", Source("models/loras"), tooltip="The name of the LoRA."),
        Float("strength_model", 1.0, min=-100.0, max=100.0, step=0.01,
              tooltip="How strongly to modify the diffusion model. This value can be negative."),
        Float("strength_clip", 1.0, min=-100.0, max=100.0, step=0.01,
              tooltip="How strongly to modify the CLIP model. This value can be negative."),
    ],
    outputs=[Output("MODEL"), Output("CLIP")],
    output_tooltips=["The modified diffusion model.", "The modified CLIP model."],
)
@node
def lora_loader(ctx: NodeContext, model: ModelHandle, clip: ModelHandle, lora_name: str, strength_model: float,
                strength_clip: float) -> tuple[ModelHandle, ModelHandle]:
    model = expect_handle(ctx, model, HandleKind.MODEL)
    clip = expect_handle(ctx, clip, HandleKind.CLIP)
    path = resolve_file(ctx, "loras", lora_name)
    get_model_cache().check_lora(checkpoint_of(ctx, model), path)
    digest = get_model_cache().digest(path)
    new_model = {**model, "loras": [*model["loras"], [lora_name, digest, float(strength_model)]]}
    new_clip = {**clip, "loras": [*clip["loras"], [lora_name, digest, float(strength_clip)]]}
    return new_model, new_clip


@nodes.define("CLIPSetLastLayer", category="conditioning", display_name="CLIP Set Last Layer",
    inputs=[
        Link("clip", "CLIP"),
        Int("stop_at_clip_layer", -1, min=-24, max=-1, step=1),
    ],
    outputs=[Output("CLIP")],
)
@node
def clip_set_last_layer(ctx: NodeContext, clip: ModelHandle, stop_at_clip_layer: int) -> tuple[ModelHandle]:
    clip = expect_handle(ctx, clip, HandleKind.CLIP)
    if not -24 <= int(stop_at_clip_layer) <= -1:
        raise NodeInputError(f"stop_at_clip_layer must be between -24 and -1, got {stop_at_clip_layer}",
                             node_id=ctx.node_id)
    return ({**clip, "stop_at_clip_layer": int(stop_at_clip_layer)},)
