"""HiDream's own nodes (comfy_extras.nodes_hidream, V3 declarations): QuadrupleCLIPLoader loads CLIP-L, CLIP-G,
T5-XXL and Llama-3.1 files as one CLIP of type hidream, and CLIPTextEncodeHiDream gives each of them its own
prompt (families.hidream, text.hidream_text)."""

from __future__ import annotations

from typing import Any

from comfymesh.catalog.schema import ComboV3, Link, Output, Source, String
from comfymesh.contracts.errors import NodeInputError
from comfymesh.contracts.handles import HandleKind, ModelHandle, clip_files_handle
from comfymesh.diffusion.families import hidream
from comfymesh.diffusion.models.cache import get_model_cache
from comfymesh.diffusion.nodes.failures import node
from comfymesh.diffusion.nodes.handles import checkpoint_of, expect_handle, loras_of
from comfymesh.diffusion.nodes.model_files import resolve_file
from comfymesh.diffusion.nodes.registry import nodes
from comfymesh.diffusion.text.hidream_text import CLIP_TYPE, hidream_conditioning
from comfymesh.stage.node import NodeContext

HIDREAM_MODULE = "comfy_extras.nodes_hidream"


def _v3(name: str, *, category: str, description: str = "", inputs: list[Any], output: str) -> Any:
    """A V3 node of comfy_extras.nodes_hidream with one output, as 0.8.0 declares these in `/object_info`."""
    return nodes.define(name, category=category, display_name=None, description=description,
                        python_module=HIDREAM_MODULE, inputs=inputs, outputs=[Output(output)], deprecated=False,
                        experimental=False, api_node=False, output_matchtypes=None, output_tooltips=[None])


@_v3("QuadrupleCLIPLoader", category="advanced/loaders",
     description="[Recipes]\n\nhidream: long clip-l, long clip-g, t5xxl, llama_8b_3.1_instruct",
     inputs=[ComboV3(f"clip_name{i}", Source("models/text_encoders")) for i in (1, 2, 3, 4)], output="CLIP")
@node
def quadruple_clip_loader(ctx: NodeContext, clip_name1: str, clip_name2: str, clip_name3: str,
                          clip_name4: str) -> tuple[ModelHandle]:
    # ComfyUI loads four files as one HiDream CLIP whatever their order; each file's role is read from it
    names = [clip_name1, clip_name2, clip_name3, clip_name4]
    paths = [resolve_file(ctx, "text_encoders", name) for name in names]
    loaded = get_model_cache().text_encoder_files(paths, CLIP_TYPE)
    return (clip_files_handle(names, loaded.digest, CLIP_TYPE),)


@_v3("CLIPTextEncodeHiDream", category="advanced/conditioning", output="CONDITIONING", inputs=[
    Link("clip", "CLIP", {}),
    String("clip_l", multiline=True, dynamicPrompts=True),
    String("clip_g", multiline=True, dynamicPrompts=True),
    String("t5xxl", multiline=True, dynamicPrompts=True),
    String("llama", multiline=True, dynamicPrompts=True),
])
@node
def clip_text_encode_hidream(ctx: NodeContext, clip: ModelHandle, clip_l: str, clip_g: str, t5xxl: str,
                             llama: str) -> tuple[list[Any]]:
    clip = expect_handle(ctx, clip, HandleKind.CLIP)
    ckpt = checkpoint_of(ctx, clip)
    if ckpt.family != hidream.NAME:
        raise NodeInputError(f"CLIPTextEncodeHiDream needs a HiDream CLIP (QuadrupleCLIPLoader or a CLIP loader of "
                             f"type hidream); this one is {ckpt.family}'s", node_id=ctx.node_id)
    with get_model_cache().family_text_lora(ckpt, loras_of(ctx, clip)):  # LoraLoader's text-encoder patches
        return (hidream_conditioning(ckpt.parts.clips, clip_l, clip_g, t5xxl, llama,
                                     clip.get("stop_at_clip_layer")),)
