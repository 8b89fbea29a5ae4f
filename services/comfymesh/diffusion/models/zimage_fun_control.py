"""Z-Image Fun ControlNets (alibaba-pai's Z-Image-Turbo-Fun-Controlnet-Union files, ModelPatchLoader's
MODEL_PATCH) built from diffusers' Z-Image control blocks, and their run inside the Z-Image transformer's call.

Recognised by `control_all_x_embedder.2-1.weight`; every size is read from shapes: the width from the control
embedder, the head width from the q norm, the control and refiner layer counts, the extra input channels (the
inpainting union's 17) and whether the refiner layers are control blocks (`control_noise_refiner.N.after_proj`,
the 2.1 union) or plain Z-Image blocks (1.0).

At sampling, as ComfyUI's ZImageControlPatch does: the control latent (the VAE's encoding in FLUX's latent form) is
patchified (2×2, channels last) and embedded; the 1.0 files run it through their plain refiner blocks at once.
After noise-refiner block i a 2.1 file's refiner control block runs on it and the embedded image tokens, its skip
(times the strength) added to the image tokens. Control block k runs after main block k·d, d = round(30 / control
layers) (ComfyUI spaces them over Z-Image's 30 blocks), on the image tokens as the main blocks got them, its skip
added after that block. Block indices follow ComfyUI's running counter (a refiner phase of other than 2 blocks
shifts it, as there), and control blocks see only image tokens with their own rope frequencies.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.models.convert import _materialise
from comfymesh.diffusion.models.tensor_source import TensorSource

MARKER = "control_all_x_embedder.2-1.weight"
PATCH = 2
MAIN_BLOCKS = 30  # ComfyUI spaces the control blocks over Z-Image's 30 main blocks, whatever the model's depth
NORM_EPS = 1e-5


def is_zimage_fun(src: TensorSource) -> bool:
    return src.has(MARKER)


class FunControlNet(nn.Module):
    """The file's modules under its own names: control_layers, control_noise_refiner, control_all_x_embedder."""

    def __init__(self, dim: int, heads: int, control_layers: int, refiners: int, in_dim: int,
                 refiner_control: bool) -> None:
        from diffusers.models.controlnets.controlnet_z_image import (
            ZImageControlTransformerBlock,
            ZImageTransformerBlock,
        )

        super().__init__()
        self.refiner_control = refiner_control
        self.control_layers = nn.ModuleList(
            ZImageControlTransformerBlock(i, dim, heads, heads, NORM_EPS, True, block_id=i)
            for i in range(control_layers))
        refiner: list[nn.Module] = [
            ZImageControlTransformerBlock(i, dim, heads, heads, NORM_EPS, True, block_id=i) if refiner_control
            else ZImageTransformerBlock(i, dim, heads, heads, NORM_EPS, True, modulation=True)
            for i in range(refiners)]
        self.control_noise_refiner = nn.ModuleList(refiner)
        self.control_all_x_embedder = nn.ModuleDict({f"{PATCH}-1": nn.Linear(PATCH * PATCH * in_dim, dim)})
        self.in_dim = in_dim

    def embed(self, latent: torch.Tensor) -> torch.Tensor:
        """ComfyUI's ZImage_Control.forward: [B, C, H, W] → tokens [B, H/2·W/2, dim] (2×2 patches, channels last)."""
        b, c, h, w = latent.shape
        if h % PATCH or w % PATCH:  # ComfyUI's patchify fails there too
            raise ModelError(f"a Z-Image Fun ControlNet needs a latent of even size (images in multiples of 16 "
                             f"pixels), got {h}×{w}")
        patches = latent.view(b, c, h // PATCH, PATCH, w // PATCH, PATCH).permute(0, 2, 4, 3, 5, 1)
        return self.control_all_x_embedder[f"{PATCH}-1"](patches.flatten(3).flatten(1, 2))


def _control_block(block: nn.Module, c: torch.Tensor, x: torch.Tensor, freqs: torch.Tensor,
                   adaln: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(skip, c) of a control block (diffusers' block stacks them; its first block adds before_proj(c) to x)."""
    stacked = block(c if block.block_id == 0 else c.unsqueeze(0), x, None, freqs, adaln)
    return stacked[-2], stacked[-1]


def load_zimage_fun(path: Path, device: torch.device, dtype: torch.dtype) -> FunControlNet:
    """The file as a FunControlNet; ModelError for another kind or one ComfyUI cannot run either."""
    src = TensorSource(path)
    if not is_zimage_fun(src):
        raise ModelError(f"{path.name} is not a Z-Image Fun ControlNet (no {MARKER})")
    dim, in_features = src.shape(MARKER)
    head_dim = src.shape("control_layers.0.attention.norm_q.weight")[0]

    def count(prefix: str) -> int:
        rx = re.compile(re.escape(prefix) + r"\.(\d+)\.")
        return len({m.group(1) for k in src.keys if (m := rx.match(k))})

    refiner_control = src.has("control_noise_refiner.0.after_proj.weight")
    if refiner_control and not torch.count_nonzero(src.get("control_noise_refiner.0.after_proj.weight")):
        raise ModelError(f"{path.name}: a Z-Image Fun ControlNet with empty refiner projections (ComfyUI's 'broken' "
                         "2.1 files) is not supported")
    hidden = src.shape("control_layers.0.feed_forward.w1.weight")[0]
    if hidden != int(dim / 3 * 8) or dim % head_dim:
        raise ModelError(f"{path.name}: a Z-Image Fun ControlNet of width {dim} with feed-forward width {hidden} "
                         f"and head width {head_dim} does not fit Z-Image's blocks")
    state = {k: src.get(k) for k in src.keys}
    try:
        net: FunControlNet = _materialise(
            lambda: FunControlNet(dim, dim // head_dim, count("control_layers"), count("control_noise_refiner"),
                                  in_features // (PATCH * PATCH), refiner_control),
            state, "Z-Image Fun ControlNet", path.name, device, dtype)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{path.name}: Z-Image Fun ControlNet could not be converted: {exc}") from exc
    return net.eval().requires_grad_(False)


@dataclass
class FunPatch:
    """One applied Fun ControlNet in one model call: its latent [B, C, h, w] and strength, and ComfyUI's running
    state (block counter, control skip and state)."""

    net: FunControlNet
    latent: torch.Tensor
    strength: float
    index: int | None = None
    skip: torch.Tensor | None = None
    c: torch.Tensor | None = None
    seen: dict[str, torch.Tensor] = field(default_factory=dict)

    def start(self, first_index: int, freqs: torch.Tensor, adaln: torch.Tensor) -> None:
        """ComfyUI's ZImage_Control.forward: the embedded control, through the plain refiner blocks (1.0 files)."""
        c = self.net.embed(self.latent.to(adaln.dtype))
        if not self.net.refiner_control:
            for layer in self.net.control_noise_refiner:
                c = layer(c, None, freqs[:, :c.shape[1]], adaln)
        self.index, self.skip, self.c = first_index, None, c

    def after_refiner(self, i: int, x: torch.Tensor, x_input: torch.Tensor, freqs: torch.Tensor,
                      adaln: torch.Tensor) -> torch.Tensor:
        n = len(self.net.control_layers)
        div = round(MAIN_BLOCKS / n)
        if i / div > n - 1:
            self.index = None
            return x
        if self.index is None or self.index > i // div:
            self.start(-3, freqs, adaln)
        assert self.index is not None and self.c is not None
        self.index += 1
        if self.net.refiner_control:
            length = self.c.shape[1]
            self.skip, self.c = _control_block(self.net.control_noise_refiner[self.index], self.c,
                                               x_input[:, :length], freqs[:, :length], adaln)
            return _add(x, self.skip, self.strength)
        self.skip = None  # the 1.0 files' refiner blocks ran at the start
        return x

    def after_block(self, i: int, img: torch.Tensor, img_input: torch.Tensor, freqs: torch.Tensor,
                    adaln: torch.Tensor) -> torch.Tensor:
        n = len(self.net.control_layers)
        div = round(MAIN_BLOCKS / n)
        if i / div > n - 1:
            self.index = None
            return img
        if self.index is None or self.index > i // div:
            self.start(-1, freqs, adaln)
        assert self.index is not None and self.c is not None
        while self.index < i // div and self.index + 1 < n:
            self.index += 1
            length = self.c.shape[1]
            self.skip, self.c = _control_block(self.net.control_layers[self.index], self.c, img_input[:, :length],
                                               freqs[:, :length], adaln)
        if i / div == self.index and self.skip is not None:
            img = _add(img, self.skip, self.strength)
            if self.index + 1 == n:
                self.index = None
        return img


def _add(tokens: torch.Tensor, skip: torch.Tensor, strength: float) -> torch.Tensor:
    """The image tokens (the first ones of the sequence) plus strength × skip."""
    out = tokens.clone()
    out[:, :skip.shape[1]] += skip.to(tokens.dtype) * strength
    return out


@contextmanager
def fun_controls(model: Any, patches: Sequence[FunPatch]) -> Iterator[None]:
    """While open, calls of the diffusers Z-Image `model` run the patches after its refiner and main blocks."""
    if not patches:
        yield
        return
    inputs: dict[str, Any] = {}

    def first_refiner(_m: nn.Module, args: tuple[Any, ...]) -> None:
        inputs["x"], inputs["x_freqs"], inputs["adaln"] = args[0], args[2], args[3]
        for p in patches:
            p.index = None

    def first_block(_m: nn.Module, args: tuple[Any, ...]) -> None:
        inputs["img"], inputs["freqs"] = args[0], args[2]

    def refiner(i: int) -> Any:
        def hook(_m: nn.Module, _args: Any, out: torch.Tensor) -> torch.Tensor:
            for p in patches:
                out = p.after_refiner(i, out, inputs["x"], inputs["x_freqs"], inputs["adaln"])
            return out
        return hook

    def block(i: int) -> Any:
        def hook(_m: nn.Module, _args: Any, out: torch.Tensor) -> torch.Tensor:
            for p in patches:
                out = p.after_block(i, out, inputs["img"], inputs["freqs"], inputs["adaln"])
            return out
        return hook

    handles = [model.noise_refiner[0].register_forward_pre_hook(first_refiner),
               model.layers[0].register_forward_pre_hook(first_block)]
    handles += [layer.register_forward_hook(refiner(i)) for i, layer in enumerate(model.noise_refiner)]
    handles += [layer.register_forward_hook(block(i)) for i, layer in enumerate(model.layers)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
