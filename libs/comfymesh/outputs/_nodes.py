"""SaveImage and PreviewImage, declared for every stage (an image is saved where it was made)."""

from __future__ import annotations

import secrets
from typing import Any

from comfymesh.catalog.schema import ANY_STAGE, Hidden, Link, NodeSet, String
from comfymesh.outputs._receipts import OutputIdentity
from comfymesh.outputs._writer import write_pngs
from comfymesh.stage.node import NodeContext

# ComfyUI draws the preview suffix from the lowercase letters without "w".
_PREVIEW_LETTERS = "abcdefghijklmnopqrstuvxyz"

output_nodes = NodeSet(ANY_STAGE)


@output_nodes.define("SaveImage", category="image", display_name="Save Image", output_node=True,
    description="Saves the input images to your ComfyUI output directory.",
    inputs=[
        Link("images", "IMAGE", tooltip="The images to save."),
        String("filename_prefix", "ComfyUI",
               tooltip="The prefix for the file to save. This may include formatting information such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes."),
        Hidden("prompt", "PROMPT"),
        Hidden("extra_pnginfo", "EXTRA_PNGINFO"),
    ],
    outputs=[],
)
def save_image(ctx: NodeContext, images: Any, filename_prefix: str = "ComfyUI") -> tuple[()]:
    """SaveImage: PNGs into output/, compress level 4, with the prompt and extra_pnginfo chunks."""
    saved = write_pngs(
        images, ctx.home, filename_prefix,
        folder_type="output", compress_level=4,
        prompt=ctx.prompt, extra_pnginfo=ctx.extra_pnginfo,
        identity=OutputIdentity(ctx.job_id, ctx.output_key), files=ctx.files,
    )
    ctx.ui = {"images": [image.as_ui() for image in saved]}
    return ()


# ComfyUI's PreviewImage inherits SaveImage's description
@output_nodes.define("PreviewImage", category="image", display_name="Preview Image", output_node=True,
    description="Saves the input images to your ComfyUI output directory.",
    inputs=[
        Link("images", "IMAGE"),
        Hidden("prompt", "PROMPT"),
        Hidden("extra_pnginfo", "EXTRA_PNGINFO"),
    ],
    outputs=[],
)
def preview_image(ctx: NodeContext, images: Any) -> tuple[()]:
    """PreviewImage: PNGs into temp/ under a random `ComfyUI_temp_xxxxx` prefix, compress level 1."""
    suffix = "".join(secrets.choice(_PREVIEW_LETTERS) for _ in range(5))
    saved = write_pngs(
        images, ctx.home, f"ComfyUI_temp_{suffix}",
        folder_type="temp", compress_level=1,
        prompt=ctx.prompt, extra_pnginfo=ctx.extra_pnginfo,
        identity=OutputIdentity(ctx.job_id, ctx.output_key), files=ctx.files,
    )
    ctx.ui = {"images": [image.as_ui() for image in saved]}
    return ()
