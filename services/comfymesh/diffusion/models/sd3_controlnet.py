"""SD3.5 ControlNets in Stability's format (the blur / canny / depth files for SD3.5 Large) as diffusers'
SD3ControlNetModel, and the chain of them a conditioning entry runs on the SD3 transformer.

Recognised by keys: `controlnet_blocks.N`, `pos_embed_input.proj` and self-attention-only
`transformer_blocks.N.adaLN_modulation.1` blocks (ComfyUI's ControlNetEmbedder); the embedders may be named as in
ComfyUI (`t_embedder.mlp`, `y_embedder.mlp`) or in diffusers (`time_text_embed…`). A `control_type` scalar says
how the hint is prepared (0 blur: as is, 1 canny: a·255·0.5 + 0.5, 2 depth: 1 − a, as ComfyUI does).

At sampling (ComfyUI's ControlNetSD35): the net's patch embedder is the SD3 model's own (`x_embedder`), a
sin-cos table over the patch grid (centre 7.5, half-width 7.5 on the shorter side) is added to it; the hint IMAGE
is scaled to 8× the latent ("nearest-exact", centre crop), prepared by its type, VAE-encoded and put in SD3's
latent form, then patch-embedded and added. Each of the net's blocks gives one residual (its controlnet_block of
the block output), repeated ⌈depth / blocks⌉ times, where depth is the net's width / 64; residual i (times the
strength) is added to the image tokens after the SD3 model's joint block i. Links of a chain sum index by index.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.models.convert import _materialise
from comfymesh.diffusion.models.tensor_source import TensorSource

MARKERS = ("controlnet_blocks.0.weight", "pos_embed_input.proj.weight", "transformer_blocks.0.adaLN_modulation.1.bias")
HEAD_DIM = 64
BLUR, CANNY, DEPTH = 0, 1, 2
HINT_UPSCALE = "nearest-exact"
LATENT_TO_PIXELS = 8
# ComfyUI's embedder names → diffusers' (the file may hold either)
_BASIC = {
    "x_embedder.proj.": "pos_embed.proj.",
    "t_embedder.mlp.0.": "time_text_embed.timestep_embedder.linear_1.",
    "t_embedder.mlp.2.": "time_text_embed.timestep_embedder.linear_2.",
    "y_embedder.mlp.0.": "time_text_embed.text_embedder.linear_1.",
    "y_embedder.mlp.2.": "time_text_embed.text_embedder.linear_2.",
}
_BLOCK = {"adaLN_modulation.1.": "norm1.linear.", "attn.proj.": "attn.to_out.0.", "mlp.fc1.": "ff.net.0.proj.",
          "mlp.fc2.": "ff.net.2."}


def is_sd35_controlnet(src: TensorSource) -> bool:
    return all(src.has(k) for k in MARKERS)


def _diffusers_state(src: TensorSource) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key in src.keys:
        if key == "control_type":
            continue
        tensor = src.get(key)
        new = next((d + key[len(c):] for c, d in _BASIC.items() if key.startswith(c)), key)
        if (m := re.match(r"(transformer_blocks\.\d+\.)(.*)", key)) is not None:
            head, rest = m.groups()
            if rest.startswith("attn.qkv."):
                kind = rest[len("attn.qkv."):]
                for name, part in zip(("to_q", "to_k", "to_v"), tensor.chunk(3), strict=True):
                    out[f"{head}attn.{name}.{kind}"] = part
                continue
            new = head + next((d + rest[len(c):] for c, d in _BLOCK.items() if rest.startswith(c)), rest)
        out[new] = tensor
    return out


@dataclass
class SD35ControlNet:
    """A loaded SD3.5 ControlNet: the diffusers model, its hint preparation and its residual repeat count."""

    net: nn.Module
    control_type: int
    repeat: int

    def prepare(self, image: torch.Tensor) -> torch.Tensor:
        """ComfyUI's preprocess_image on the scaled hint [B, C, H, W] in [0, 1]."""
        if self.control_type == CANNY:
            return image * 255 * 0.5 + 0.5
        if self.control_type == DEPTH:
            return 1.0 - image
        return image


def load_sd35_controlnet(path: Path, device: torch.device, dtype: torch.dtype) -> SD35ControlNet:
    """The file as an SD35ControlNet; ModelError when it is another kind or one we cannot build."""
    from diffusers import SD3ControlNetModel

    src = TensorSource(path)
    if not is_sd35_controlnet(src):
        raise ModelError(f"{path.name} is not an SD3.5 ControlNet (no {', '.join(MARKERS)})")
    state = _diffusers_state(src)
    y_in = "time_text_embed.text_embedder.linear_1.weight"
    width, pooled = state[y_in].shape
    if width == pooled:  # SD3.5 8B's ControlNets embed y twice (ComfyUI's double_y_emb)
        raise ModelError(f"{path.name}: an SD3.5 ControlNet with a doubled y embedder (8B) is not supported")
    hint_channels, patch = state["pos_embed_input.proj.weight"].shape[1], state["pos_embed_input.proj.weight"].shape[2]
    # the patch embedder is the SD3 model's own, set at each binding (ComfyUI's ControlNetSD35.pre_run)
    proj = "pos_embed.proj."
    state.setdefault(proj + "weight", torch.zeros(width, hint_channels, patch, patch))
    state.setdefault(proj + "bias", torch.zeros(width))
    layers = len({m.group(1) for k in state if (m := re.match(r"transformer_blocks\.(\d+)\.", k))})
    control_type = round(float(src.get("control_type"))) if src.has("control_type") else -1
    cfg = {"sample_size": 128, "patch_size": patch, "in_channels": hint_channels, "num_layers": layers,
           "attention_head_dim": HEAD_DIM, "num_attention_heads": width // HEAD_DIM, "joint_attention_dim": None,
           "caption_projection_dim": width, "pooled_projection_dim": pooled, "out_channels": hint_channels,
           "pos_embed_max_size": None, "pos_embed_type": None}
    try:
        net: nn.Module = _materialise(lambda: SD3ControlNetModel(**cfg), state, "SD3.5 ControlNet", path.name, device,
                                      dtype)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{path.name}: SD3.5 ControlNet could not be converted: {exc}") from exc
    depth = width // HEAD_DIM  # ComfyUI's main_model_double: the SD3 model's depth read from the net's width
    return SD35ControlNet(net.eval().requires_grad_(False), control_type, math.ceil(depth / layers))


def sincos_grid(width: int, h: int, w: int) -> torch.Tensor:
    """ComfyUI's get_2d_sincos_pos_embed_torch(width, w, h): [h·w, width], the grid spanning centre 7.5 ± 7.5 on
    the shorter side (proportionally more on the longer), [sin, cos] of each axis, the w axis first."""
    small = min(h, w)
    half_h, half_w = h / small * 7.5, w / small * 7.5
    gh, gw = torch.meshgrid(torch.linspace(7.5 - half_h, 7.5 + half_h, h), torch.linspace(7.5 - half_w, 7.5 + half_w, w),
                            indexing="ij")

    def axis(pos: torch.Tensor) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(width // 4, dtype=torch.float32) / (width / 4.0))
        out = pos.reshape(-1)[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([axis(gw), axis(gh)], dim=1)


def _pad(x: torch.Tensor, patch: int) -> torch.Tensor:
    pad_h, pad_w = (-x.shape[-2]) % patch, (-x.shape[-1]) % patch
    return F.pad(x, (0, pad_w, 0, pad_h), mode="circular") if pad_h or pad_w else x


def residuals(control: SD35ControlNet, transformer: Any, x: torch.Tensor, t: torch.Tensor,
              y: torch.Tensor, hint: torch.Tensor, strength: float) -> list[torch.Tensor]:
    """The net's residuals for the SD3 model's blocks, in order: x [N, C, h, w], t = σ·1000 [N], pooled y
    [N, P], hint latent [N, C, h, w] (prepared, encoded and in SD3's latent form)."""
    net: Any = control.net
    patch = int(net.config.patch_size)
    net.pos_embed.proj.load_state_dict(transformer.pos_embed.proj.state_dict())
    x, hint = _pad(x, patch), _pad(hint.to(x.dtype), patch)
    grid = sincos_grid(net.inner_dim, x.shape[-2] // patch, x.shape[-1] // patch).to(x.device, x.dtype)

    def add_grid(_module: nn.Module, _args: Any, out: torch.Tensor) -> torch.Tensor:
        return out + grid

    handle = net.pos_embed.register_forward_hook(add_grid)
    try:
        outs = net(hidden_states=x, controlnet_cond=hint, conditioning_scale=strength, pooled_projections=y.to(x.dtype),
                   timestep=t, return_dict=False)[0]
    finally:
        handle.remove()
    return [o for o in outs for _ in range(control.repeat)]


@dataclass
class SD35Link:
    """One applied SD3.5 ControlNet: the net, its hint latent maker, strength and σ range."""

    control: SD35ControlNet
    encode_hint: Callable[[torch.Tensor, int, int], torch.Tensor]  # (prepared pixels [B, C, H, W], h, w) → latent
    hint: torch.Tensor  # IMAGE [B, H, W, C] in [0, 1]
    strength: float
    sigma_start: float
    sigma_end: float


BlockResidualFn = Callable[..., torch.Tensor]
"""The SD3 model's call (x_in, timesteps, context, y, residuals=one per joint block) → its output (the sampling
model's `unet`, so LoRA weights and the model's lock apply as to every call)."""


class SD35ControlChain:
    """A guidance.ControlledUNet: the SD3 model with the residuals of a chain of SD3.5 ControlNets."""

    def __init__(self, links: Sequence[SD35Link], transformer: nn.Module, model: BlockResidualFn,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.links = list(links)
        self.transformer = transformer
        self.model = model
        self.device = device
        self.dtype = dtype
        self._hints: dict[tuple[int, int, int], torch.Tensor] = {}

    def _hint(self, index: int, height: int, width: int) -> torch.Tensor:
        key = (index, height, width)
        if key not in self._hints:
            from comfymesh.diffusion.nodes.latent import _upscale as common_upscale

            link = self.links[index]
            image = torch.as_tensor(link.hint).float().movedim(-1, 1)
            scaled = common_upscale(image, width * LATENT_TO_PIXELS, height * LATENT_TO_PIXELS, HINT_UPSCALE, "center")
            self._hints[key] = link.encode_hint(link.control.prepare(scaled), height, width).to(self.device, self.dtype)
        return self._hints[key]

    def __call__(self, x_in: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor | None,
                 sigma: torch.Tensor, chunks: int) -> torch.Tensor | None:
        from comfymesh.diffusion.models.controlnet import _broadcast, merge_residuals

        if y is None:
            raise ModelError("an SD3.5 ControlNet needs the conditioning's pooled output")
        step = float(sigma.reshape(-1)[0])
        total: list[torch.Tensor] | None = None
        for index, link in enumerate(self.links):
            if step > link.sigma_start or step < link.sigma_end:
                continue
            hint = _broadcast(self._hint(index, x_in.shape[2], x_in.shape[3]), x_in.shape[0], chunks)
            outs = residuals(link.control, self.transformer, x_in, t, y, hint, link.strength)
            total = merge_residuals(total, outs)
        if total is None:
            return None
        return self.model(x_in, t, ctx, y, residuals=total)
