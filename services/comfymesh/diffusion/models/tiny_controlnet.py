"""Tiny random-weight ControlNet files matching a tiny checkpoint family, in ComfyUI's single-file LDM layout
(`control_model.` keys, as lllyasviel's files) or in diffusers' naming, optionally as a "difference" file.

The encoder half mirrors the family's tiny UNet (`tiny_checkpoint.SPECS`); the hint block has ComfyUI's
fixed 16-16-32-32-96-96-256 widths; the zero convolutions are random, not zero, so that the strength shows.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from comfymesh.diffusion.models.tiny_checkpoint import SPECS, Shapes, _init, unet_shapes

HINT_WIDTHS = (16, 16, 32, 32, 96, 96, 256)  # input_hint_block convs 0, 2, …, 12; 14 maps to the UNet width


def controlnet_shapes(family: str = "sd15", hint_channels: int = 3) -> Shapes:
    """Every tensor of an LDM-named ControlNet for the family's tiny UNet, without the `control_model.` prefix."""
    u = SPECS[family].unet
    unet = unet_shapes(u, prefix="")
    s: Shapes = {k: v for k, v in unet.items()
                 if k.startswith(("time_embed.", "label_emb.", "input_blocks.", "middle_block."))}
    blocks = len({k.split(".")[1] for k in s if k.startswith("input_blocks.")})
    for i in range(blocks):
        ch = unet[f"input_blocks.{i}.0.weight"][0] if i == 0 else _block_width(unet, i)
        s[f"zero_convs.{i}.0.weight"], s[f"zero_convs.{i}.0.bias"] = (ch, ch, 1, 1), (ch,)
    widths = (hint_channels, *HINT_WIDTHS, u.model_channels)
    for j in range(len(widths) - 1):
        s[f"input_hint_block.{2 * j}.weight"] = (widths[j + 1], widths[j], 3, 3)
        s[f"input_hint_block.{2 * j}.bias"] = (widths[j + 1],)
    mid = unet["middle_block.2.out_layers.3.weight"][0]
    s["middle_block_out.0.weight"], s["middle_block_out.0.bias"] = (mid, mid, 1, 1), (mid,)
    return s


def _block_width(unet: Shapes, block: int) -> int:
    key = f"input_blocks.{block}.0.out_layers.3.weight"
    return unet[key][0] if key in unet else unet[f"input_blocks.{block}.0.op.weight"][0]


def make_state_dict(family: str = "sd15", seed: int = 0, dtype: torch.dtype = torch.float16,
                    ) -> dict[str, torch.Tensor]:
    gen = torch.Generator("cpu").manual_seed(seed)
    return {name: _init(name, shape, gen).to(dtype) for name, shape in sorted(controlnet_shapes(family).items())}


def make_tiny_controlnet(path: str | Path, family: str = "sd15", seed: int = 0, naming: str = "ldm",
                         difference_of: str | Path | None = None, dtype: torch.dtype = torch.float16) -> Path:
    """Write a tiny ControlNet for `family` ("sd15", "sdxl", …) and return its path.

    `naming`: "ldm" (`control_model.` keys) or "diffusers"; `difference_of`: a tiny checkpoint whose UNet
    weights are subtracted (a difference file, marked by a `difference` tensor, for DiffControlNetLoader)."""
    sd = make_state_dict(family, seed, dtype)
    if difference_of is not None:
        from safetensors import safe_open

        with safe_open(str(difference_of), framework="pt") as base:
            names = set(base.keys())
            for key in sd:
                if f"model.diffusion_model.{key}" in names:
                    sd[key] = sd[key] - base.get_tensor(f"model.diffusion_model.{key}").to(dtype)
    out: dict[str, torch.Tensor]
    if naming == "ldm":
        out = {"control_model." + k: v for k, v in sd.items()}
        if difference_of is not None:
            out["difference"] = torch.tensor([])
    elif naming == "diffusers":
        from comfymesh.diffusion.models.controlnet import _ldm_to_diffusers

        # real diffusers SDXL files carry the ADM projection as the added text/time embedding
        out = {k.replace("class_embedding.", "add_embedding."): v.contiguous()
               for k, v in _ldm_to_diffusers(sd).items()}
    else:
        raise ValueError(f"unknown naming {naming!r}: ldm or diffusers")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path), metadata={"format": "pt", "comfymesh_tiny_controlnet": family})
    return path


__all__ = ["controlnet_shapes", "make_tiny_controlnet"]
