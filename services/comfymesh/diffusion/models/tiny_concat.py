"""Tiny random-weight inpainting (9-channel) and instruct-pix2pix (8-channel) checkpoints for tests.

Each is a tiny checkpoint of its family whose UNet stem takes the extra channels: the stem's weights for
the 4 latent channels are the family checkpoint's own, the extra channels get seeded random weights."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from comfymesh.diffusion.models.tiny_checkpoint import make_state_dict

STEM = "model.diffusion_model.input_blocks.0.0.weight"
IN_CHANNELS = {"inpaint": 9, "ip2p": 8}


def make_tiny_concat_checkpoint(path: str | Path, family: str = "sd15", kind: str = "inpaint", seed: int = 0,
                                dtype: torch.dtype = torch.float16) -> Path:
    """Write a tiny `kind` ("inpaint" or "ip2p") checkpoint of `family` and return its path."""
    sd = make_state_dict(family, seed, dtype)
    stem = sd[STEM].float()
    extra = IN_CHANNELS[kind] - stem.shape[1]
    gen = torch.Generator().manual_seed(seed + 1)
    fan_in = IN_CHANNELS[kind] * stem.shape[2] * stem.shape[3]
    more = torch.randn((stem.shape[0], extra, *stem.shape[2:]), generator=gen) / fan_in**0.5
    sd[STEM] = torch.cat([stem, more], dim=1).to(dtype)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata={"format": "pt", "comfymesh_tiny_family": f"{family}-{kind}"})
    return path
