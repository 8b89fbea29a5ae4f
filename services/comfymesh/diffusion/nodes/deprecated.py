"""Nodes of ComfyUI's nodes.py declared as ComfyUI declares them but refused when run, each with the node
to use instead: the loaders that need a config file or a diffusers folder, and GLIGEN."""

from __future__ import annotations

from typing import Any

from comfymesh.catalog.schema import MAX_RESOLUTION, Combo, Int, Link, Output, Source, String
from comfymesh.contracts.errors import NodeInputError
from comfymesh.diffusion.nodes.failures import node
from comfymesh.diffusion.nodes.registry import nodes
from comfymesh.stage.node import NodeContext

CHECKPOINT_OUTPUTS = [Output("MODEL"), Output("CLIP"), Output("VAE")]
INSTEAD_OF_CONFIG = ("use Load Checkpoint (CheckpointLoaderSimple), which recognises the model from its weights; "
                     "a config file is not needed")


def _refuse(ctx: NodeContext, message: str) -> Any:
    raise NodeInputError(f"{ctx.class_type or 'this node'} is not supported: {message}", node_id=ctx.node_id)


# the configs list is empty: no config file is ever read
@nodes.define("CheckpointLoader", category="advanced/loaders", display_name="Load Checkpoint With Config (DEPRECATED)",
              inputs=[Combo("config_name", []), Combo("ckpt_name", Source("models/checkpoints"))],
              outputs=CHECKPOINT_OUTPUTS, deprecated=True)
@node
def checkpoint_loader(ctx: NodeContext, config_name: str, ckpt_name: str) -> tuple[Any, ...]:
    return _refuse(ctx, INSTEAD_OF_CONFIG)


# diffusers folders are not listed: they are never loaded
@nodes.define("DiffusersLoader", category="advanced/loaders/deprecated", inputs=[Combo("model_path", [])],
              outputs=CHECKPOINT_OUTPUTS)
@node
def diffusers_loader(ctx: NodeContext, model_path: str) -> tuple[Any, ...]:
    return _refuse(ctx, "diffusers folders do not load; use Load Checkpoint (CheckpointLoaderSimple) with a "
                        "single-file .safetensors checkpoint of the model")


@nodes.define("GLIGENLoader", category="loaders", inputs=[Combo("gligen_name", Source("models/gligen"))],
              outputs=[Output("GLIGEN")])
@node
def gligen_loader(ctx: NodeContext, gligen_name: str) -> tuple[Any, ...]:
    return _refuse(ctx, "GLIGEN models do not load yet; to place a prompt in a region use Conditioning (Set Area) "
                        "or Conditioning (Set Mask)")


@nodes.define("GLIGENTextBoxApply", category="conditioning/gligen",
              inputs=[Link("conditioning_to", "CONDITIONING"), Link("clip", "CLIP"),
                      Link("gligen_textbox_model", "GLIGEN"), String("text", multiline=True, dynamicPrompts=True),
                      Int("width", 64, min=8, max=MAX_RESOLUTION, step=8),
                      Int("height", 64, min=8, max=MAX_RESOLUTION, step=8),
                      Int("x", 0, min=0, max=MAX_RESOLUTION, step=8), Int("y", 0, min=0, max=MAX_RESOLUTION, step=8)],
              outputs=[Output("CONDITIONING")])
@node
def gligen_text_box_apply(ctx: NodeContext, **inputs: Any) -> tuple[Any, ...]:
    return _refuse(ctx, "GLIGEN text boxes are not supported yet; to place a prompt in a region use Conditioning "
                        "(Set Area) or Conditioning (Set Mask)")
