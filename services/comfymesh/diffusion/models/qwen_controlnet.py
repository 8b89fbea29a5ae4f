"""Qwen-Image InstantX ControlNets (the union and the inpainting files ControlNetLoader takes) as diffusers'
QwenImageControlNetModel, and the chain of them a conditioning entry runs on the Qwen-Image model.

Recognised by keys as ComfyUI 0.8.0 tells them: `controlnet_blocks.0.weight` with Qwen-Image's
`transformer_blocks.0.img_mlp` blocks; every size from shapes. The patch embedder `controlnet_x_embedder` takes
the 2×2-patched hint: 64 wide for the union net (the hint's 16 latent channels), 68 for the inpainting net (the
latent and one mask channel: ComfyUI's concat_mask).

At sampling (ComfyUI's ControlNet with the Wan 2.1 latent format, compression 1): the hint IMAGE is scaled to 8×
the latent ("nearest-exact", centre crop), encoded by the Wan VAE and put in the Wan 2.1 latent form, the
inpainting net's mask (the kept area) scaled to the latent and appended as a channel. The net runs Qwen-Image's
call on the noisy latent with the hint's tokens added to the image tokens; its controlnet_block i of block i's
image stream gives residual i, repeated ⌈60 / blocks⌉ times (ComfyUI reads a 60-block main model) and cut at 60;
residual i (times the strength) is added to the image tokens after the main model's block i. Links of a chain sum
index by index (ComfyUI's control_merge).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.families import qwen_image
from comfymesh.diffusion.models.controlnet import merge_residuals
from comfymesh.diffusion.models.tensor_source import TensorSource

MARKERS = ("controlnet_blocks.0.weight", "transformer_blocks.0.img_mlp.net.0.proj.weight")
MAIN_MODEL_BLOCKS = 60  # ComfyUI's main_model_double for these nets, whatever the main model's depth
HINT_UPSCALE = "nearest-exact"
LATENT_TO_PIXELS = 8
INPAINT_EXTRA = 4  # the inpainting net's extra patched channels: one mask channel × the 2×2 patch


def is_qwen_controlnet(src: TensorSource) -> bool:
    return all(src.has(k) for k in MARKERS) and src.has("controlnet_x_embedder.weight")


def is_fun_controlnet(src: TensorSource) -> bool:
    """VideoX-Fun's Qwen-Image ControlNets (Qwen-Image-2512-Fun-Controlnet-Union): VACE-style `control_blocks`
    fed by `control_img_in`, which ComfyUI 0.8.0's ControlNetLoader has no loader for."""
    return src.has("control_img_in.weight") and any(k.startswith("control_blocks.") for k in src.keys)


@dataclass
class QwenControlNet:
    """A loaded Qwen-Image ControlNet: the diffusers model and whether it takes the inpainting mask channel."""

    net: nn.Module
    concat_mask: bool


def _config(src: TensorSource) -> tuple[dict[str, Any], int]:
    dim, patched = src.shape("img_in.weight")
    head_dim = src.shape("transformer_blocks.0.attn.norm_q.weight")[0]
    hint_in = src.shape("controlnet_x_embedder.weight")[1]
    layers = len({m.group(1) for k in src.keys if (m := re.match(r"transformer_blocks\.(\d+)\.", k))})
    if dim % head_dim or head_dim % 16:
        raise ModelError(f"{src.path.name}: a Qwen-Image ControlNet of width {dim} with {head_dim}-wide heads has a "
                         "shape this stage cannot build (the head width must be a multiple of 16 dividing the width)")
    axes = (head_dim // 8, head_dim * 7 // 16, head_dim * 7 // 16)  # as qwen_image.QwenImageLayout.axes_dims
    cfg = {"patch_size": qwen_image.PATCH, "in_channels": patched, "out_channels": patched // qwen_image.PATCH**2,
           "num_layers": layers, "attention_head_dim": head_dim, "num_attention_heads": dim // head_dim,
           "joint_attention_dim": src.shape("txt_in.weight")[1], "axes_dims_rope": axes,
           "extra_condition_channels": hint_in - patched}
    return cfg, hint_in - patched


def load_qwen_controlnet(path: Path, device: torch.device, dtype: torch.dtype) -> QwenControlNet:
    """The file as a QwenControlNet on `device` in `dtype`; ModelError when it is another kind."""
    from diffusers import QwenImageControlNetModel

    src = TensorSource(path)
    if not is_qwen_controlnet(src):
        raise ModelError(f"{path.name} is not a Qwen-Image ControlNet (no {', '.join(MARKERS)})")
    cfg, extra = _config(src)
    if extra not in (0, INPAINT_EXTRA):
        raise ModelError(f"{path.name}: a Qwen-Image ControlNet whose hint embedder takes {extra} channels beyond "
                         f"the latent's (0 or {INPAINT_EXTRA} expected)")
    state = {k: src.get(k).to(device=device, dtype=dtype) for k in src.keys}
    with torch.device("meta"):
        net: Any = QwenImageControlNetModel(**cfg)
    result = net.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in result.missing_keys if not k.startswith("pos_embed.")]
    if missing or result.unexpected_keys:
        raise ModelError(f"{path.name}: the Qwen-Image ControlNet weights do not fit the layout read from the file "
                         f"(missing {missing[:4]}, unexpected {result.unexpected_keys[:4]})")
    net.pos_embed = nn.Identity()  # the rotations are ComfyUI's positions (qwen_image.qwen_image_rope)
    return QwenControlNet(net.eval().requires_grad_(False), concat_mask=extra == INPAINT_EXTRA)


def residuals(control: QwenControlNet, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, hint: torch.Tensor,
              strength: float) -> list[torch.Tensor]:
    """The residuals for the main model's blocks, in order (at most 60): x [N, C, T, h, w] the noisy latent,
    t = σ [N], ctx [N, L, D] the text features, hint [N, C', T, h, w] (latent, and mask channel)."""
    net: Any = control.net
    param = next(net.parameters())
    tokens, ids = qwen_image.patchify(x.to(param.dtype))
    hint_tokens, _ = qwen_image.patchify(hint.to(param.dtype))
    freqs = qwen_image.qwen_image_rope(net, ids, x.shape[-2:], ctx.shape[1])
    h = net.img_in(tokens.to(param.device)) + net.controlnet_x_embedder(hint_tokens.to(param.device))
    txt = net.txt_in(net.txt_norm(ctx.to(param.device, param.dtype)))
    temb = net.time_text_embed(t.to(param.device).float(), h)
    repeat = math.ceil(MAIN_MODEL_BLOCKS / len(net.controlnet_blocks))
    outs: list[torch.Tensor] = []
    for block, project in zip(net.transformer_blocks, net.controlnet_blocks, strict=True):
        txt, h = block(hidden_states=h, encoder_hidden_states=txt, encoder_hidden_states_mask=None, temb=temb,
                       image_rotary_emb=freqs)
        outs += [project(h) * strength] * repeat
    return outs[:MAIN_MODEL_BLOCKS]


def add_after_block(residual_list: Sequence[torch.Tensor]) -> Callable[[int, torch.Tensor], torch.Tensor]:
    """The main model's block patch: residual i added to the image tokens (the sequence's head) after block i."""

    def patch(index: int, hidden: torch.Tensor) -> torch.Tensor:
        if index >= len(residual_list):
            return hidden
        add = residual_list[index].to(hidden.dtype)
        return torch.cat([hidden[:, :add.shape[1]] + add, hidden[:, add.shape[1]:]], dim=1)

    return patch


def _broadcast(hint: torch.Tensor, rows: int, chunks: int) -> torch.Tensor:
    """ComfyUI's broadcast_image_to on a latent hint of any rank: its batch cycled to each entry's rows."""
    if hint.shape[0] == rows:
        return hint
    per_entry = rows // chunks
    reps = -(-per_entry // hint.shape[0])
    one = hint.repeat(reps, *[1] * (hint.ndim - 1))[:per_entry]
    return one.repeat(chunks, *[1] * (hint.ndim - 1))


@dataclass
class QwenControlLink:
    """One applied Qwen-Image ControlNet: the net, its hint latent maker, strength and σ range."""

    control: QwenControlNet
    encode_hint: Callable[[int, int], torch.Tensor]  # (latent h, w) → hint latent [1 or B, C', T, h, w]
    strength: float
    sigma_start: float
    sigma_end: float


ModelCall = Callable[..., torch.Tensor]
"""The Qwen-Image model call (x, t, context, y, block_patch=…) → its output (the sampling model's `unet`)."""


class QwenControlChain:
    """A guidance.ControlledUNet: the Qwen-Image model with the residuals of a chain of its ControlNets."""

    def __init__(self, links: Sequence[QwenControlLink], model: ModelCall) -> None:
        self.links = list(links)
        self.model = model
        self._hints: dict[tuple[int, int, int], torch.Tensor] = {}

    def _hint(self, index: int, height: int, width: int) -> torch.Tensor:
        key = (index, height, width)
        if key not in self._hints:
            self._hints[key] = self.links[index].encode_hint(height, width)
        return self._hints[key]

    def __call__(self, x_in: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor | None,
                 sigma: torch.Tensor, chunks: int, **model_inputs: Any) -> torch.Tensor | None:
        """`model_inputs`: the entry's own (reference latents and their method), passed to the model call; the
        ControlNet sees the noisy latent alone, as in ComfyUI."""
        step = float(sigma.reshape(-1)[0])
        x5 = x_in.unsqueeze(2) if x_in.ndim == 4 else x_in
        total: list[torch.Tensor] | None = None
        for index, link in enumerate(self.links):
            if step > link.sigma_start or step < link.sigma_end:
                continue
            hint = self._hint(index, x5.shape[-2], x5.shape[-1])
            hint = _broadcast(hint.unsqueeze(2) if hint.ndim == 4 else hint, x5.shape[0], chunks)

            outs = residuals(link.control, x5, t, ctx, hint, link.strength)
            total = merge_residuals(total, outs)
        if total is None:
            return None
        out: torch.Tensor = self.model(x_in, t, ctx, y, block_patch=add_after_block(total), **model_inputs)
        return out
