"""ControlNet files as diffusers ControlNetModels, and the chain of ControlNets a conditioning entry runs.

Files: ComfyUI's SD1.x/SD2.x/SDXL ControlNet single files in LDM naming (`control_model.` or bare
`input_blocks…`, `zero_convs`, `input_hint_block`, `middle_block_out`; a "difference" file holds deltas to
the UNet's weights) or diffusers naming (`controlnet_cond_embedding…`, `controlnet_down_blocks…`). Every
size is read from tensor shapes, as for checkpoints. SDXL's added text/time embedding becomes a projected
class embedding fed with the y vector we build, as our UNet is configured.

At sampling (ComfyUI's ControlNet.get_control): the hint IMAGE is scaled to 8× the (area's) latent size
with "nearest-exact" and a centre crop, each ControlNet whose [σ(end_percent), σ(start_percent)] holds the
step's σ runs on the UNet's own input, its residuals times its strength, and the residuals of the chain
(earliest applied first) are summed into the UNet's down-block skips and middle block.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.models.convert import Placement, _materialise
from comfymesh.diffusion.models.recognise import UNET_PREFIX, found_summary
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.sampling.guidance import ResidualUNetFn

LDM_PREFIX = "control_model."
DIFF_MARKER = "difference"
HINT_UPSCALE = "nearest-exact"
LATENT_TO_PIXELS = 8


def _count(keys: Sequence[str], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := rx.match(k))})


def is_diff(src: TensorSource) -> bool:
    """A "difference" ControlNet: its weights are deltas to the UNet's (DiffControlNetLoader)."""
    return src.has(DIFF_MARKER)


def _ldm_state(src: TensorSource, base: TensorSource | None) -> dict[str, torch.Tensor] | None:
    """The LDM-named ControlNet weights without their prefix (differences added to `base`), None if absent."""
    prefix = LDM_PREFIX if src.has(LDM_PREFIX + "zero_convs.0.0.weight") else ""
    if not src.has(prefix + "zero_convs.0.0.weight"):
        return None
    state = {k[len(prefix):]: src.get(k) for k in src.keys if k.startswith(prefix) and k != DIFF_MARKER}
    if is_diff(src):
        if base is None:
            raise ModelError(f"{src.path.name} is a difference ControlNet: load it with DiffControlNetLoader "
                             "and the model it was made from")
        base_prefix = UNET_PREFIX if base.has(UNET_PREFIX + "input_blocks.0.0.weight") else ""
        for key, delta in state.items():
            if base.has(base_prefix + key):
                state[key] = delta + base.get(base_prefix + key).to(delta.dtype)
    return state


def _ldm_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    keys = list(state)
    first_down = min((int(m.group(1)) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.", k))),
                     default=_count(keys, r"input_blocks\.(\d+)\."))
    out: dict[str, torch.Tensor] = convert_controlnet_checkpoint(state, {"layers_per_block": first_down - 1})
    for i in (0, 2):  # SDXL's ADM projection (label_emb) is not in diffusers' converter
        for kind in ("weight", "bias"):
            if f"label_emb.0.{i}.{kind}" in state:
                out[f"class_embedding.linear_{i // 2 + 1}.{kind}"] = state[f"label_emb.0.{i}.{kind}"]
    return out


def controlnet_config(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A diffusers ControlNetModel config read from diffusers-named weights."""
    keys = list(state)

    def shape(key: str) -> tuple[int, ...]:
        return tuple(state[key].shape)

    levels = _count(keys, r"down_blocks\.(\d+)\.")
    channels = [shape(f"down_blocks.{i}.resnets.0.conv2.weight")[0] for i in range(levels)]
    depth = [_count(keys, rf"down_blocks\.{i}\.attentions\.0\.transformer_blocks\.(\d+)\.") for i in range(levels)]
    mid_depth = _count(keys, r"mid_block\.attentions\.0\.transformer_blocks\.(\d+)\.")
    attn_k = sorted(k for k in keys if k.endswith("attn2.to_k.weight"))
    if not attn_k:
        raise ModelError("the ControlNet has no cross-attention layers")
    proj_in = next(k for k in keys if k.endswith(".proj_in.weight"))
    linear = len(shape(proj_in)) == 2
    adm = shape("class_embedding.linear_1.weight")[1] if "class_embedding.linear_1.weight" in state else None
    hint = shape("controlnet_cond_embedding.conv_in.weight")
    n_blocks = _count(keys, r"controlnet_cond_embedding\.blocks\.(\d+)\.")
    embedding = [hint[0]] + [shape(f"controlnet_cond_embedding.blocks.{j}.weight")[0] for j in range(1, n_blocks, 2)]
    layers = [d or 1 for d in depth]
    if depth[-1] == 0:
        layers[-1] = mid_depth or 1  # diffusers takes the middle block's depth from the last level
    # SD1 fixes 8 heads; SD2 and SDXL use 64-channel heads (what shapes cannot tell, as for the UNet)
    heads: int | list[int] = 8 if adm is None and not linear else [max(c // 64, 1) for c in channels]
    cfg: dict[str, Any] = {
        "in_channels": shape("conv_in.weight")[1],
        "conditioning_channels": hint[1],
        "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depth],
        "mid_block_type": "UNetMidBlock2DCrossAttn" if mid_depth else "UNetMidBlock2D",
        "block_out_channels": channels,
        "layers_per_block": _count(keys, r"down_blocks\.0\.resnets\.(\d+)\."),
        "cross_attention_dim": shape(attn_k[0])[1],
        "transformer_layers_per_block": layers,
        "attention_head_dim": heads,
        "use_linear_projection": linear,
        "upcast_attention": linear and adm is None,  # SD2
        "conditioning_embedding_out_channels": tuple(embedding),
    }
    if adm is not None:
        cfg["class_embed_type"] = "projection"
        cfg["projection_class_embeddings_input_dim"] = adm
    return cfg


def load_controlnet(path: Path, place: Placement, base: TensorSource | None = None) -> nn.Module:
    """A ControlNet file as a diffusers ControlNetModel on the placement's device in the UNet's dtype;
    ModelError naming what the file holds when it is no ControlNet. `base` is the UNet's file
    (a difference ControlNet's weights are added to it)."""
    from diffusers import ControlNetModel

    src = TensorSource(path)
    ldm = _ldm_state(src, base)
    if ldm is not None:
        state = _ldm_to_diffusers(ldm)
    elif src.has("controlnet_cond_embedding.conv_in.weight"):
        # SDXL files: the added text/time embedding is our projected class embedding
        state = {k.replace("add_embedding.", "class_embedding."): src.get(k) for k in src.keys}
    else:
        raise ModelError(f"{path.name} is not a ControlNet (no zero_convs / controlnet_cond_embedding weights): "
                         f"found {found_summary(src)}")
    try:
        cfg = controlnet_config(state)
        net: nn.Module = _materialise(lambda: ControlNetModel(**cfg), state, "ControlNet", path.name, place.device,
                                      place.unet_dtype)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{path.name}: ControlNet could not be converted: {exc}") from exc
    return net.eval().requires_grad_(False)


@dataclass
class ControlLink:
    """One applied ControlNet: its model, hint IMAGE [B, H, W, C] in [0, 1], strength and σ range."""

    net: nn.Module
    hint: torch.Tensor
    strength: float
    sigma_start: float  # it runs while sigma_end ≤ σ ≤ sigma_start
    sigma_end: float


def _broadcast(hint: torch.Tensor, rows: int, chunks: int) -> torch.Tensor:
    """ComfyUI's broadcast_image_to: the hint's batch cycled to each entry's rows, once per entry."""
    if hint.shape[0] == 1:
        return hint.expand(rows, -1, -1, -1)
    per_entry = rows // chunks
    reps = -(-per_entry // hint.shape[0])
    one = hint.repeat(reps, 1, 1, 1)[:per_entry]
    return one.repeat(chunks, 1, 1, 1)


def merge_residuals(total: list[torch.Tensor] | None, outs: list[torch.Tensor]) -> list[torch.Tensor]:
    """ComfyUI's control_merge of two chained nets' residual lists (SD3.5's, Qwen-Image's): summed index by
    index, the longer list's tail kept; `total` None is the chain's first net."""
    if total is None:
        return outs
    return [a + b for a, b in zip(total, outs, strict=False)] + (total[len(outs):] or outs[len(total):])


class ControlChain:
    """A guidance.ControlledUNet: the UNet with the residuals of a chain of ControlNets."""

    def __init__(self, links: Sequence[ControlLink], unet: ResidualUNetFn, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.links = list(links)
        self.unet = unet
        self.device = device
        self.dtype = dtype
        self._hints: dict[tuple[int, int, int], torch.Tensor] = {}

    def _hint(self, index: int, height: int, width: int) -> torch.Tensor:
        key = (index, height, width)
        if key not in self._hints:
            # LatentUpscale's resize is ComfyUI's common_upscale (imported here: the nodes package imports us)
            from comfymesh.diffusion.nodes.latent import _upscale as common_upscale

            image = torch.as_tensor(self.links[index].hint).float().movedim(-1, 1)
            scaled = common_upscale(image, width * LATENT_TO_PIXELS, height * LATENT_TO_PIXELS, HINT_UPSCALE, "center")
            self._hints[key] = scaled.to(self.device, self.dtype)
        return self._hints[key]

    def __call__(self, x_in: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor | None,
                 sigma: torch.Tensor, chunks: int) -> torch.Tensor | None:
        step = float(sigma.reshape(-1)[0])
        down: list[torch.Tensor] | None = None
        mid: torch.Tensor | None = None
        for index, link in enumerate(self.links):
            if step > link.sigma_start or step < link.sigma_end:
                continue
            net: Any = link.net
            hint = _broadcast(self._hint(index, x_in.shape[2], x_in.shape[3]), x_in.shape[0], chunks)
            # the ControlNet sees the latent channels only (an inpainting UNet's concat is not its input)
            d, m = net(x_in[:, :net.config.in_channels], t, encoder_hidden_states=ctx, controlnet_cond=hint,
                       conditioning_scale=link.strength, class_labels=y, return_dict=False)
            down = list(d) if down is None else [a + b for a, b in zip(down, d, strict=True)]
            mid = m if mid is None else mid + m
        if down is None or mid is None:
            return None
        return self.unet(x_in, t, ctx, y, down, mid)
