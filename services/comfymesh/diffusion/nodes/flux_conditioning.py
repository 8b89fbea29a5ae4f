"""FLUX's conditioning nodes (comfy_extras.nodes_flux, V3 declarations) and ReferenceLatent
(comfy_extras.nodes_edit_model): each sets a key in every entry's extras that the FLUX family reads when it
builds the model's inputs (families.flux: `guidance`, `reference_latents`, `reference_latents_method`)."""

from __future__ import annotations

from typing import Any

import torch

from comfymesh.catalog.schema import ComboV3, Float, Int, Link, Output, String
from comfymesh.contracts.errors import NodeInputError
from comfymesh.contracts.handles import HandleKind, ModelHandle
from comfymesh.diffusion.models.cache import get_model_cache
from comfymesh.diffusion.nodes.failures import node
from comfymesh.diffusion.nodes.handles import checkpoint_of, expect_handle, loras_of
from comfymesh.diffusion.nodes.registry import nodes
from comfymesh.diffusion.text.flux_text import encode_flux
from comfymesh.stage.node import NodeContext

FLUX_MODULE = "comfy_extras.nodes_flux"
CATEGORY = "advanced/conditioning/flux"
REFERENCE_METHODS = ["offset", "index", "uxo/uno", "index_timestep_zero"]
Conditioning = list[Any]


def _v3(name: str, *, category: str = CATEGORY, module: str = FLUX_MODULE, display_name: str | None = None,
        description: str = "", experimental: bool = False, inputs: list[Any]) -> Any:
    """A V3 node with one CONDITIONING output, as 0.8.0 declares these in `/object_info`."""
    return nodes.define(name, category=category, display_name=display_name, description=description,
                        python_module=module, inputs=inputs, outputs=[Output("CONDITIONING")], deprecated=False,
                        experimental=experimental, api_node=False, output_matchtypes=None, output_tooltips=[None])


def set_values(ctx: NodeContext, conditioning: Conditioning, values: dict[str, Any],
               append: bool = False) -> Conditioning:
    """Each entry with `values` set in a copy of its extras (`append`: lists extended, as ComfyUI's
    conditioning_set_values(append=True) does)."""
    if not conditioning:
        raise NodeInputError("conditioning is empty: connect a text encoder's CONDITIONING", node_id=ctx.node_id)
    out = []
    for item in conditioning:
        extras = dict(item[1]) if len(item) > 1 and item[1] else {}
        for key, value in values.items():
            extras[key] = [*extras.get(key, []), *value] if append and isinstance(value, list) else value
        out.append([item[0], extras])
    return out


@_v3("CLIPTextEncodeFlux", inputs=[Link("clip", "CLIP", {}), String("clip_l", multiline=True, dynamicPrompts=True),
                                   String("t5xxl", multiline=True, dynamicPrompts=True),
                                   Float("guidance", 3.5, min=0.0, max=100.0, step=0.1)])
@node
def clip_text_encode_flux(ctx: NodeContext, clip: ModelHandle, clip_l: str, t5xxl: str,
                          guidance: float) -> tuple[Conditioning]:
    # a prompt for each encoder: CLIP-L's for the pooled output, T5-XXL's for the context; guidance in the extras
    clip = expect_handle(ctx, clip, HandleKind.CLIP)
    ckpt = checkpoint_of(ctx, clip)
    if ckpt.family != "flux":
        raise NodeInputError(f"CLIPTextEncodeFlux needs FLUX text encoders (DualCLIPLoader type 'flux'), got a "
                             f"{ckpt.family} CLIP", node_id=ctx.node_id)
    with get_model_cache().family_text_lora(ckpt, loras_of(ctx, clip)):  # LoraLoader's text-encoder patches
        return (encode_flux(ckpt.parts.clips, clip_l, t5xxl, clip.get("stop_at_clip_layer"),
                            {"guidance": float(guidance)}, clip=clip),)


@_v3("FluxGuidance", inputs=[Link("conditioning", "CONDITIONING", {}),
                             Float("guidance", 3.5, min=0.0, max=100.0, step=0.1)])
@node
def flux_guidance(ctx: NodeContext, conditioning: Conditioning, guidance: float) -> tuple[Conditioning]:
    return (set_values(ctx, conditioning, {"guidance": float(guidance)}),)


@_v3("FluxDisableGuidance", description="This node completely disables the guidance embed on Flux and Flux like "
     "models", inputs=[Link("conditioning", "CONDITIONING", {})])
@node
def flux_disable_guidance(ctx: NodeContext, conditioning: Conditioning) -> tuple[Conditioning]:
    return (set_values(ctx, conditioning, {"guidance": None}),)


@_v3("FluxKontextMultiReferenceLatentMethod", display_name="Edit Model Reference Method", experimental=True,
     inputs=[Link("conditioning", "CONDITIONING", {}), ComboV3("reference_latents_method", REFERENCE_METHODS)])
@node
def flux_kontext_reference_method(ctx: NodeContext, conditioning: Conditioning,
                                  reference_latents_method: str) -> tuple[Conditioning]:
    # ComfyUI folds "uxo/uno" (and any "uso") into "uxo"
    method = "uxo" if "uxo" in reference_latents_method or "uso" in reference_latents_method else reference_latents_method
    return (set_values(ctx, conditioning, {"reference_latents_method": method}),)


@_v3("ReferenceLatent", category="advanced/conditioning/edit_models", module="comfy_extras.nodes_edit_model",
     description="This node sets the guiding latent for an edit model. If the model supports it you can chain "
                 "multiple to set multiple reference images.",
     inputs=[Link("conditioning", "CONDITIONING", {}), Link("latent", "LATENT", {}, section="optional")])
@node
def reference_latent(ctx: NodeContext, conditioning: Conditioning,
                     latent: dict[str, Any] | None = None) -> tuple[Conditioning]:
    if latent is None:
        return (conditioning,)
    samples = torch.as_tensor(latent["samples"])
    return (set_values(ctx, conditioning, {"reference_latents": [samples]}, append=True),)


@nodes.define("T5TokenizerOptions", category="_for_testing/conditioning", python_module="comfy_extras.nodes_cond",
              inputs=[Link("clip", "CLIP", {}), Int("min_padding", 0, min=0, max=10000, step=1),
                      Int("min_length", 0, min=0, max=10000, step=1)],
              outputs=[Output("CLIP")], display_name=None, description="", deprecated=False, experimental=True,
              api_node=False, output_matchtypes=None, output_tooltips=[None])
@node
def t5_tokenizer_options(ctx: NodeContext, clip: ModelHandle, min_padding: int, min_length: int) -> tuple[ModelHandle]:
    # the T5 prompts of this CLIP get at least `min_padding` pad tokens after the end token and at least
    # `min_length` tokens in all (FLUX's 256-token minimum replaced; Chroma's none raised)
    clip = expect_handle(ctx, clip, HandleKind.CLIP)
    return ({**clip, "t5xxl_min_padding": int(min_padding), "t5xxl_min_length": int(min_length)},)
