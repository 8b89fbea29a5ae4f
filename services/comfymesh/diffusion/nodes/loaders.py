"""Loader nodes: checkpoints, the split loaders' diffusion-model and text encoder files, VAE files, LoRAs, and
the CLIP layer to stop at."""

from __future__ import annotations

from comfymesh.catalog.schema import Combo, Float, Int, Link, Output, Source
from comfymesh.contracts.errors import NodeInputError
from comfymesh.contracts.handles import (
    HandleKind,
    ModelHandle,
    checkpoint_handle,
    clip_files_handle,
    unet_file_handle,
    vae_file_handle,
)
from comfymesh.diffusion.latents.pixel_space import PIXEL_SPACE_VAE, pixel_space_handle
from comfymesh.diffusion.models.cache import get_model_cache
from comfymesh.diffusion.models.checkpoint import WEIGHT_DTYPES
from comfymesh.diffusion.models.split_files import check_clip_type
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


# ComfyUI 0.8.0's type lists: declared whole so that graphs naming any of them load; the model-family issues
# make more of them run (`split_files.supported_clip_types`)
CLIP_TYPES = ["stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos",
              "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image", "flux2", "ovis"]
DUAL_CLIP_TYPES = ["sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image", "hunyuan_video_15", "kandinsky5",
                   "kandinsky5_image", "ltxv", "newbie"]
CLIP_DEVICES = ["default", "cpu"]
CLIP_RECIPES = ("[Recipes]\n\nstable_diffusion: clip-l\nstable_cascade: clip-g\nsd3: t5 xxl/ clip-g / clip-l\n"
                "stable_audio: t5 base\nmochi: t5 xxl\ncosmos: old t5 xxl\nlumina2: gemma 2 2B\nwan: umt5 xxl\n "
                "hidream: llama-3.1 (Recommend) or t5\nomnigen2: qwen vl 2.5 3B")
DUAL_CLIP_RECIPES = ("[Recipes]\n\nsdxl: clip-l, clip-g\nsd3: clip-l, clip-g / clip-l, t5 / clip-g, t5\n"
                     "flux: clip-l, t5\nhidream: at least one of t5 or llama, recommended t5 and llama\n"
                     "hunyuan_image: qwen2.5vl 7b and byt5 small\nnewbie: gemma-3-4b-it, jina clip v2")


@nodes.define("UNETLoader", category="advanced/loaders", display_name="Load Diffusion Model",
    inputs=[
        Combo("unet_name", Source("models/diffusion_models")),
        Combo("weight_dtype", list(WEIGHT_DTYPES)),
    ],
    outputs=[Output("MODEL")],
)
@node
def unet_loader(ctx: NodeContext, unet_name: str, weight_dtype: str) -> tuple[ModelHandle]:
    if weight_dtype not in WEIGHT_DTYPES:
        raise NodeInputError(f"weight_dtype {weight_dtype!r} is not one of {', '.join(WEIGHT_DTYPES)}",
                             node_id=ctx.node_id)
    loaded = get_model_cache().unet_file(resolve_file(ctx, "diffusion_models", unet_name), weight_dtype)
    return (unet_file_handle(unet_name, loaded.digest, weight_dtype),)


def _clip_loader(ctx: NodeContext, names: list[str], clip_type: str, device: str) -> tuple[ModelHandle]:
    check_clip_type(clip_type)
    if device not in CLIP_DEVICES:
        raise NodeInputError(f"device {device!r} is not one of {', '.join(CLIP_DEVICES)}", node_id=ctx.node_id)
    # device "cpu" keeps ComfyUI's text encoders off the GPU to save its memory; ours share the stage's device
    paths = [resolve_file(ctx, "text_encoders", name) for name in names]
    loaded = get_model_cache().text_encoder_files(paths, clip_type)
    return (clip_files_handle(names, loaded.digest, clip_type),)


@nodes.define("CLIPLoader", category="advanced/loaders", display_name="Load CLIP", description=CLIP_RECIPES,
    inputs=[
        Combo("clip_name", Source("models/text_encoders")),
        Combo("type", CLIP_TYPES),
        Combo("device", CLIP_DEVICES, advanced=True, section="optional"),
    ],
    outputs=[Output("CLIP")],
)
@node
def clip_loader(ctx: NodeContext, clip_name: str, type: str, device: str = "default") -> tuple[ModelHandle]:
    return _clip_loader(ctx, [clip_name], type, device)


@nodes.define("DualCLIPLoader", category="advanced/loaders", description=DUAL_CLIP_RECIPES,
    inputs=[
        Combo("clip_name1", Source("models/text_encoders")),
        Combo("clip_name2", Source("models/text_encoders")),
        Combo("type", DUAL_CLIP_TYPES),
        Combo("device", CLIP_DEVICES, advanced=True, section="optional"),
    ],
    outputs=[Output("CLIP")],
)
@node
def dual_clip_loader(ctx: NodeContext, clip_name1: str, clip_name2: str, type: str,
                     device: str = "default") -> tuple[ModelHandle]:
    return _clip_loader(ctx, [clip_name1, clip_name2], type, device)


@nodes.define("VAELoader", category="loaders", display_name="Load VAE",
    inputs=[
        Combo("vae_name", Source("models/vae")),
    ],
    outputs=[Output("VAE")],
)
@node
def vae_loader(ctx: NodeContext, vae_name: str) -> tuple[ModelHandle]:
    if vae_name == PIXEL_SPACE_VAE:
        return (pixel_space_handle(),)
    if vae_name in ("taesd", "taesdxl", "taesd3", "taef1"):
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
    get_model_cache().check_lora(path, checkpoint_of(ctx, model), checkpoint_of(ctx, clip))
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
