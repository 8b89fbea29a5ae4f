"""SD3's own nodes (comfy_extras.nodes_sd3, V3 declarations): TripleCLIPLoader loads CLIP-L, CLIP-G and T5-XXL
files as one CLIP of type sd3, and CLIPTextEncodeSD3 gives each of them its own prompt (families.sd3)."""

from __future__ import annotations

from typing import Any

from comfymesh.catalog.schema import ComboV3, Link, Output, Source, String
from comfymesh.contracts.errors import NodeInputError
from comfymesh.contracts.handles import HandleKind, ModelHandle, clip_files_handle
from comfymesh.diffusion.families import sd3
from comfymesh.diffusion.models.cache import get_model_cache
from comfymesh.diffusion.nodes.failures import node
from comfymesh.diffusion.nodes.handles import checkpoint_of, expect_handle, loras_of
from comfymesh.diffusion.nodes.model_files import resolve_file
from comfymesh.diffusion.nodes.registry import nodes
from comfymesh.stage.node import NodeContext

SD3_MODULE = "comfy_extras.nodes_sd3"
EMPTY_PADDING = ["none", "empty_prompt"]


def _v3(name: str, *, category: str, description: str = "", inputs: list[Any], output: str) -> Any:
    """A V3 node of comfy_extras.nodes_sd3 with one output, as 0.8.0 declares these in `/object_info`."""
    return nodes.define(name, category=category, display_name=None, description=description,
                        python_module=SD3_MODULE, inputs=inputs, outputs=[Output(output)], deprecated=False,
                        experimental=False, api_node=False, output_matchtypes=None, output_tooltips=[None])


@_v3("TripleCLIPLoader", category="advanced/loaders", description="[Recipes]\n\nsd3: clip-l, clip-g, t5",
     inputs=[ComboV3(f"clip_name{i}", Source("models/text_encoders")) for i in (1, 2, 3)], output="CLIP")
@node
def triple_clip_loader(ctx: NodeContext, clip_name1: str, clip_name2: str, clip_name3: str) -> tuple[ModelHandle]:
    # ComfyUI loads the three files as one SD3 CLIP whatever their order; each file's role is read from it
    names = [clip_name1, clip_name2, clip_name3]
    paths = [resolve_file(ctx, "text_encoders", name) for name in names]
    loaded = get_model_cache().text_encoder_files(paths, "sd3")
    return (clip_files_handle(names, loaded.digest, "sd3"),)


@_v3("CLIPTextEncodeSD3", category="advanced/conditioning", output="CONDITIONING", inputs=[
    Link("clip", "CLIP", {}),
    String("clip_l", multiline=True, dynamicPrompts=True),
    String("clip_g", multiline=True, dynamicPrompts=True),
    String("t5xxl", multiline=True, dynamicPrompts=True),
    ComboV3("empty_padding", EMPTY_PADDING),
])
@node
def clip_text_encode_sd3(ctx: NodeContext, clip: ModelHandle, clip_l: str, clip_g: str, t5xxl: str,
                         empty_padding: str) -> tuple[list[Any]]:
    if empty_padding not in EMPTY_PADDING:
        raise NodeInputError(f"empty_padding {empty_padding!r} is not one of {', '.join(EMPTY_PADDING)}",
                             node_id=ctx.node_id)
    clip = expect_handle(ctx, clip, HandleKind.CLIP)
    ckpt = checkpoint_of(ctx, clip)
    if ckpt.family != sd3.NAME:
        raise NodeInputError(f"CLIPTextEncodeSD3 needs an SD3 CLIP (TripleCLIPLoader, a CLIP loader of type sd3 or "
                             f"an SD3 checkpoint); this one is {ckpt.family}'s", node_id=ctx.node_id)
    with get_model_cache().family_text_lora(ckpt, loras_of(ctx, clip)):  # LoraLoader's text-encoder patches
        return (sd3.encode_sd3_node(ckpt.parts.clips, clip_l, clip_g, t5xxl, empty_padding,
                                    clip.get("stop_at_clip_layer")),)
