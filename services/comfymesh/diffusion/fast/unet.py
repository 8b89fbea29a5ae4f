"""The UNet on the fast path: channels-last on CUDA, graphed then compiled per shape bucket."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from comfymesh.diffusion.fast.tiers import FastModule


class FastUNet(FastModule):
    """The UNet as a UNetFn (x, t, context, y), channels-last on CUDA, graphed then compiled per bucket."""

    def __init__(self, unet: nn.Module, device: torch.device, **options: Any) -> None:
        if device.type == "cuda":
            unet.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.unet = unet
        super().__init__("unet", self._eager_unet, self._forward, device, **options)

    # the plain module call (also what gets compiled)
    def _forward(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor,
                 y: torch.Tensor | None) -> torch.Tensor:
        out: torch.Tensor = self.unet(x, t, encoder_hidden_states=ctx, class_labels=y, return_dict=False)[0]
        return out

    def _eager_unet(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return self._forward(*self._channels_last((x, t, ctx, y)))
