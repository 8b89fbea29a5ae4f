"""CLIP vision, style model and unCLIP nodes of ComfyUI's nodes.py: load and run a CLIP vision model,
append a style model's tokens to a conditioning, attach image embeds for SDXL revision (models.unclip)."""

from __future__ import annotations

from typing import Any

import torch

from comfymesh.catalog.schema import Combo, Float, Link, Output, Source
from comfymesh.contracts.errors import NodeInputError
from comfymesh.diffusion.models import clip_vision as vision_models
from comfymesh.diffusion.models import style_model as style_models
from comfymesh.diffusion.models import unclip
from comfymesh.diffusion.nodes.failures import node
from comfymesh.diffusion.nodes.file_models import file_handle, resident
from comfymesh.diffusion.nodes.registry import nodes
from comfymesh.stage.node import NodeContext

VISION, VISION_FOLDER = "clip_vision", "clip_vision"
STYLE, STYLE_FOLDER = "style_model", "style_models"
OUTPUT_KEYS = ("image_embeds", "last_hidden_state", "penultimate_hidden_states")


def _vision_output(ctx: NodeContext, value: Any) -> dict[str, torch.Tensor]:
    if not isinstance(value, dict) or any(key not in value for key in OUTPUT_KEYS):
        raise NodeInputError(f"expected a CLIP_VISION_OUTPUT input, got {type(value).__name__}", node_id=ctx.node_id)
    return {key: torch.as_tensor(value[key]).float() for key in OUTPUT_KEYS}


@nodes.define("CLIPVisionLoader", category="loaders", display_name="Load CLIP Vision",
              inputs=[Combo("clip_name", Source(f"models/{VISION_FOLDER}"))], outputs=[Output("CLIP_VISION")])
@node
def clip_vision_loader(ctx: NodeContext, clip_name: str) -> tuple[dict[str, Any]]:
    digest, _ = resident(ctx, VISION, VISION_FOLDER, clip_name, vision_models.load_clip_vision)
    return (file_handle(VISION, clip_name, digest),)


@nodes.define("CLIPVisionEncode", category="conditioning", display_name="CLIP Vision Encode",
              inputs=[Link("clip_vision", "CLIP_VISION"), Link("image", "IMAGE"), Combo("crop", ["center", "none"])],
              outputs=[Output("CLIP_VISION_OUTPUT")])
@node
def clip_vision_encode(ctx: NodeContext, clip_vision: Any, image: Any, crop: str = "center") -> tuple[dict[str, Any]]:
    if crop not in ("center", "none"):
        raise NodeInputError(f"crop must be center or none, got {crop!r}", node_id=ctx.node_id)
    model = resident(ctx, VISION, VISION_FOLDER, clip_vision, vision_models.load_clip_vision)[1]
    return (vision_models.encode_image(model, torch.as_tensor(image).float(), crop),)


@nodes.define("unCLIPConditioning", category="conditioning",
              inputs=[Link("conditioning", "CONDITIONING"), Link("clip_vision_output", "CLIP_VISION_OUTPUT"),
                      Float("strength", 1.0, min=-10.0, max=10.0, step=0.01),
                      Float("noise_augmentation", 0.0, min=0.0, max=1.0, step=0.01)],
              outputs=[Output("CONDITIONING")])
@node
def unclip_conditioning(ctx: NodeContext, conditioning: list[Any], clip_vision_output: Any, strength: float,
                        noise_augmentation: float) -> tuple[list[Any]]:
    if strength == 0:
        return (conditioning,)
    embeds = _vision_output(ctx, clip_vision_output)["image_embeds"]
    return ([[item[0], unclip.add_unclip(dict(item[1]) if len(item) > 1 and item[1] else {}, embeds, strength,
                                         noise_augmentation)] for item in conditioning],)


@nodes.define("StyleModelLoader", category="loaders", display_name="Load Style Model",
              inputs=[Combo("style_model_name", Source(f"models/{STYLE_FOLDER}"))], outputs=[Output("STYLE_MODEL")])
@node
def style_model_loader(ctx: NodeContext, style_model_name: str) -> tuple[dict[str, Any]]:
    digest, _ = resident(ctx, STYLE, STYLE_FOLDER, style_model_name, style_models.load_style_model)
    return (file_handle(STYLE, style_model_name, digest),)


@nodes.define("StyleModelApply", category="conditioning/style_model", display_name="Apply Style Model",
              inputs=[Link("conditioning", "CONDITIONING"), Link("style_model", "STYLE_MODEL"),
                      Link("clip_vision_output", "CLIP_VISION_OUTPUT"),
                      Float("strength", 1.0, min=0.0, max=10.0, step=0.001),
                      Combo("strength_type", list(style_models.STRENGTH_TYPES))],
              outputs=[Output("CONDITIONING")])
@node
def style_model_apply(ctx: NodeContext, conditioning: list[Any], style_model: Any, clip_vision_output: Any,
                      strength: float = 1.0, strength_type: str = "multiply") -> tuple[list[Any]]:
    model = resident(ctx, STYLE, STYLE_FOLDER, style_model, style_models.load_style_model)[1]
    tokens = style_models.style_tokens(model, _vision_output(ctx, clip_vision_output)["last_hidden_state"])
    return (style_models.apply_style(conditioning, tokens, float(strength), strength_type),)
