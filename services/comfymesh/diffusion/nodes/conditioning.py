"""Conditioning nodes: prompt text through the checkpoint's text encoders, and combining conditionings."""

from __future__ import annotations

from typing import Any

from comfymesh.catalog.schema import Link, Output, String
from comfymesh.contracts.handles import HandleKind, ModelHandle
from comfymesh.diffusion.families import registry as families
from comfymesh.diffusion.models.cache import get_model_cache
from comfymesh.diffusion.nodes.failures import node
from comfymesh.diffusion.nodes.handles import checkpoint_of, expect_handle, loras_of
from comfymesh.diffusion.nodes.registry import nodes
from comfymesh.diffusion.text.encode import encode_prompt
from comfymesh.stage.node import NodeContext


@nodes.define("CLIPTextEncode", category="conditioning", display_name="CLIP Text Encode (Prompt)",
    description="Encodes a text prompt using a CLIP model into an embedding that can be used to guide the diffusion model towards generating specific images.",
    inputs=[
        String("text", multiline=True, dynamicPrompts=True, tooltip="The text to be encoded."),
        Link("clip", "CLIP", tooltip="The CLIP model used for encoding the text."),
    ],
    outputs=[Output("CONDITIONING")],
    output_tooltips=["A conditioning containing the embedded text used to guide the diffusion model."],
)
@node
def clip_text_encode(ctx: NodeContext, text: str, clip: ModelHandle) -> tuple[list[Any]]:
    clip = expect_handle(ctx, clip, HandleKind.CLIP)
    ckpt = checkpoint_of(ctx, clip)
    family = families.get(ckpt.family)
    if family is not None:  # LoraLoader's text-encoder patches swapped in while it encodes
        with get_model_cache().family_text_lora(ckpt, loras_of(ctx, clip)):
            return (family.encode(text, ckpt.parts.clips, clip),)
    encoders = get_model_cache().text_encoders(ckpt, loras_of(ctx, clip))
    cond, pooled = encode_prompt(encoders, text, clip.get("stop_at_clip_layer"))
    return ([[cond, {"pooled_output": pooled}]],)


@nodes.define("ConditioningCombine", category="conditioning", display_name="Conditioning (Combine)",
    inputs=[
        Link("conditioning_1", "CONDITIONING"),
        Link("conditioning_2", "CONDITIONING"),
    ],
    outputs=[Output("CONDITIONING")],
)
@node
def conditioning_combine(ctx: NodeContext, conditioning_1: list[Any], conditioning_2: list[Any]) -> tuple[list[Any]]:
    return (list(conditioning_1) + list(conditioning_2),)
