"""ControlNetInpaintingAliMamaApply (comfy_extras/nodes_controlnet.py): Apply ControlNet with an inpainting mask.

For a ControlNet that takes the mask as a hint channel (ComfyUI's concat_mask: the Qwen-Image InstantX inpainting
net here) the mask is inverted to the kept area, the image blanked where it is repainted (the kept area bilinearly
scaled to the image and rounded) and the kept area travels with the hint (`controlnet.MASK_KEY`); any other
ControlNet is applied as Apply ControlNet does, with the VAE.
"""

from __future__ import annotations

from typing import Any

import torch

from comfymesh.catalog.schema import Float, Link, Output
from comfymesh.diffusion.models.qwen_controlnet import QwenControlNet
from comfymesh.diffusion.nodes.controlnet import CATEGORY, Conditioning, _applied, _expect_control_net, _network
from comfymesh.diffusion.nodes.failures import node
from comfymesh.diffusion.nodes.latent import _upscale as common_upscale
from comfymesh.diffusion.nodes.registry import nodes
from comfymesh.stage.node import NodeContext


def masked_hint(image: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(IMAGE [B, H, W, C], MASK [(B,) h, w] where 1 repaints) → (the image blanked where it is repainted, the
    kept area [B, 1, h, w]), as ComfyUI's ControlNetInpaintingAliMamaApply prepares them."""
    pixels = torch.as_tensor(image).float()
    m = torch.as_tensor(mask).float()
    kept = 1.0 - m.reshape(-1, 1, m.shape[-2], m.shape[-1])
    apply = common_upscale(kept, pixels.shape[2], pixels.shape[1], "bilinear", "center").round()
    return pixels * apply.movedim(1, -1).repeat(1, 1, 1, pixels.shape[3]), kept


@nodes.define("ControlNetInpaintingAliMamaApply", category=CATEGORY, display_name=None, description="",
              python_module="comfy_extras.nodes_controlnet",
              inputs=[
                  Link("positive", "CONDITIONING", {}),
                  Link("negative", "CONDITIONING", {}),
                  Link("control_net", "CONTROL_NET", {}),
                  Link("vae", "VAE", {}),
                  Link("image", "IMAGE", {}),
                  Link("mask", "MASK", {}),
                  Float("strength", 1.0, min=0.0, max=10.0, step=0.01),
                  Float("start_percent", 0.0, min=0.0, max=1.0, step=0.001),
                  Float("end_percent", 1.0, min=0.0, max=1.0, step=0.001),
              ],
              outputs=[Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative")],
              deprecated=False, experimental=False, api_node=False, output_matchtypes=None,
              output_tooltips=[None, None])
@node
def controlnet_inpainting_alimama_apply(ctx: NodeContext, positive: Conditioning, negative: Conditioning,
                                        control_net: Any, vae: Any, image: Any, mask: Any, strength: float,
                                        start_percent: float, end_percent: float,
                                        ) -> tuple[Conditioning, Conditioning]:
    if strength == 0:  # Apply ControlNet's shortcut, which ComfyUI's node calls
        return positive, negative
    control_net = _expect_control_net(ctx, control_net)
    kept = None
    net = _network(ctx, control_net)
    if isinstance(net, QwenControlNet) and net.concat_mask:
        image, kept = masked_hint(image, mask)
    return (_applied(positive, control_net, image, strength, start_percent, end_percent, False, vae, kept),
            _applied(negative, control_net, image, strength, start_percent, end_percent, False, vae, kept))
