"""Recognise a single-file LDM checkpoint: its family, prediction type and every part's layout.

Every size (channels, levels, res blocks, transformer depths, context width, ADM width, CLIP widths and
depths) is read from tensor shapes; only what shapes cannot tell (attention head sizes, activations)
comes from the family, as ComfyUI does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.models.tensor_source import TensorSource

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SDXL_ADM_SIZES = 6 * 256  # original h/w, crop top/left, target h/w, each a 256-wide sinusoid

# text encoder layouts: (family key, role, prefix, layout)
CLIP_L_SD1 = "cond_stage_model.transformer."
CLIP_H_SD2 = "cond_stage_model.model."
CLIP_L_SDXL = "conditioner.embedders.0.transformer."
CLIP_G_SDXL = "conditioner.embedders.1.model."
CLIP_G_REFINER = "conditioner.embedders.0.model."


@dataclass(frozen=True)
class UNetLayout:
    in_channels: int
    out_channels: int
    model_channels: int
    level_channels: tuple[int, ...]
    res_blocks: int
    depth: tuple[int, ...]  # transformer depth per down level, 0 = no attention
    up_depth: tuple[int, ...]  # per up level, top (deepest) level first
    mid_depth: int
    context_dim: int
    linear_proj: bool
    adm: int | None


@dataclass(frozen=True)
class ClipLayout:
    """One text encoder: where it lives, its layout and sizes (all from shapes)."""

    role: str  # "l", "h" or "g"
    prefix: str
    openclip: bool
    vocab: int
    width: int
    layers: int
    intermediate: int
    positions: int
    projection: int | None


@dataclass(frozen=True)
class VAELayout:
    in_channels: int
    out_channels: int
    base_channels: int
    level_channels: tuple[int, ...]
    res_blocks: int
    z_channels: int
    diffusers_naming: bool


@dataclass(frozen=True)
class Recognition:
    family: str  # "sd1", "sd2", "sdxl"
    prediction: str  # "eps" or "v"
    ztsnr: bool
    unet: UNetLayout
    clips: tuple[ClipLayout, ...]
    vae: VAELayout | None


def _count(keys: Iterable[str], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := rx.match(k))})


def parse_unet(src: TensorSource, prefix: str = UNET_PREFIX) -> UNetLayout:
    """Read the UNet's structure from its key names and tensor shapes."""
    keys = [k[len(prefix):] for k in src.keys if k.startswith(prefix)]
    kset = set(keys)

    def shape(name: str) -> tuple[int, ...]:
        return src.shape(prefix + name)

    conv_in = shape("input_blocks.0.0.weight")
    model_channels, in_channels = conv_in[0], conv_in[1]
    n_input = _count(keys, r"input_blocks\.(\d+)\.")
    levels: list[list[int]] = [[]]  # per level: transformer depth of each res block
    level_channels: list[int] = []
    for b in range(1, n_input):
        if f"input_blocks.{b}.0.op.weight" in kset:
            levels.append([])
            continue
        ch = shape(f"input_blocks.{b}.0.out_layers.3.weight")[0]
        if len(levels[-1]) == 0:
            level_channels.append(ch)
        levels[-1].append(_count(keys, rf"input_blocks\.{b}\.1\.transformer_blocks\.(\d+)\."))
    res_counts = {len(lv) for lv in levels}
    if len(res_counts) != 1:
        raise ModelError(f"UNet has a different number of res blocks per level ({sorted(res_counts)})")
    depth = []
    for lv in levels:
        if len(set(lv)) != 1:
            raise ModelError(f"UNet level has res blocks with different transformer depths {lv}")
        depth.append(lv[0])
    res_blocks = res_counts.pop()
    n_output = _count(keys, r"output_blocks\.(\d+)\.")
    per_up = res_blocks + 1
    if n_output != per_up * len(levels):
        raise ModelError(f"UNet has {n_output} output blocks, expected {per_up * len(levels)}")
    up_depth = tuple(
        _count(keys, rf"output_blocks\.{lvl * per_up}\.1\.transformer_blocks\.(\d+)\.") for lvl in range(len(levels))
    )
    mid_depth = _count(keys, r"middle_block\.1\.transformer_blocks\.(\d+)\.")
    attn_k = sorted(k for k in keys if k.endswith("transformer_blocks.0.attn2.to_k.weight"))
    if not attn_k:
        raise ModelError("UNet has no cross-attention layers: not a text-to-image UNet")
    context_dim = shape(attn_k[0])[1]
    proj_in = next(k for k in keys if k.endswith(".proj_in.weight"))
    adm = shape("label_emb.0.0.weight")[1] if "label_emb.0.0.weight" in kset else None
    return UNetLayout(
        in_channels=in_channels,
        out_channels=shape("out.2.weight")[0],
        model_channels=model_channels,
        level_channels=tuple(level_channels),
        res_blocks=res_blocks,
        depth=tuple(depth),
        up_depth=up_depth,
        mid_depth=mid_depth,
        context_dim=context_dim,
        linear_proj=len(shape(proj_in)) == 2,
        adm=adm,
    )


def parse_clip(src: TensorSource, role: str, prefix: str) -> ClipLayout | None:
    """Sizes of a text encoder at `prefix` (Hugging Face or OpenCLIP layout), None if absent."""
    keys = [k[len(prefix):] for k in src.keys if k.startswith(prefix)]
    if not keys:
        return None
    if "token_embedding.weight" in keys:  # OpenCLIP
        vocab, width = src.shape(prefix + "token_embedding.weight")
        layers = _count(keys, r"transformer\.resblocks\.(\d+)\.")
        inter = src.shape(prefix + "transformer.resblocks.0.mlp.c_fc.weight")[0]
        positions = src.shape(prefix + "positional_embedding")[0]
        proj = src.shape(prefix + "text_projection")[1] if src.has(prefix + "text_projection") else None
        return ClipLayout(role, prefix, True, vocab, width, layers, inter, positions, proj)
    inner = "text_model." if any(k.startswith("text_model.") for k in keys) else ""
    emb = f"{prefix}{inner}embeddings.token_embedding.weight"
    if not src.has(emb):
        return None
    vocab, width = src.shape(emb)
    layers = _count(keys, rf"{inner}encoder\.layers\.(\d+)\.")
    inter = src.shape(f"{prefix}{inner}encoder.layers.0.mlp.fc1.weight")[0]
    positions = src.shape(f"{prefix}{inner}embeddings.position_embedding.weight")[0]
    # a CLIPTextModelWithProjection file (ComfyUI's clip_g.safetensors) keeps its projection beside text_model
    proj = src.shape(prefix + "text_projection.weight")[0] if src.has(prefix + "text_projection.weight") else None
    return ClipLayout(role, prefix, False, vocab, width, layers, inter, positions, proj)


def parse_vae(src: TensorSource, prefix: str) -> VAELayout | None:
    """Sizes of a VAE in LDM naming (or diffusers naming, for standalone files), None if absent."""
    if src.has(prefix + "encoder.down_blocks.0.resnets.0.conv1.weight"):
        keys = [k[len(prefix):] for k in src.keys if k.startswith(prefix)]
        n_levels = _count(keys, r"encoder\.down_blocks\.(\d+)\.")
        chans = tuple(src.shape(f"{prefix}encoder.down_blocks.{i}.resnets.0.conv2.weight")[0] for i in range(n_levels))
        res = _count(keys, r"encoder\.down_blocks\.0\.resnets\.(\d+)\.")
        diffusers = True
    elif src.has(prefix + "encoder.down.0.block.0.conv1.weight"):
        keys = [k[len(prefix):] for k in src.keys if k.startswith(prefix)]
        n_levels = _count(keys, r"encoder\.down\.(\d+)\.")
        chans = tuple(src.shape(f"{prefix}encoder.down.{i}.block.0.conv2.weight")[0] for i in range(n_levels))
        res = _count(keys, r"encoder\.down\.0\.block\.(\d+)\.")
        diffusers = False
    else:
        return None
    conv_in = src.shape(prefix + "encoder.conv_in.weight")
    return VAELayout(
        in_channels=conv_in[1],
        out_channels=src.shape(prefix + "decoder.conv_out.weight")[0],
        base_channels=conv_in[0],
        level_channels=chans,
        res_blocks=res,
        z_channels=src.shape(prefix + "decoder.conv_in.weight")[1],
        diffusers_naming=diffusers,
    )


def found_summary(src: TensorSource) -> str:
    prefixes = sorted({".".join(k.split(".")[:2]) for k in src.keys})
    shown = ", ".join(prefixes[:8]) + (", …" if len(prefixes) > 8 else "")
    return f"{len(src.keys)} tensors under {shown}"


def recognise(src: TensorSource) -> Recognition:
    """Tell SD1.x / SD2.x (eps or v) / SDXL base apart from keys and shapes, or raise ModelError."""
    name = src.path.name
    n_unet = sum(k.startswith(UNET_PREFIX) for k in src.keys)
    if n_unet <= 5:
        raise ModelError(f"{name} is not a Stable Diffusion checkpoint: no UNet ({UNET_PREFIX}*) in it; "
                         f"found {found_summary(src)}")
    try:
        unet = parse_unet(src)
    except (KeyError, StopIteration, IndexError) as exc:
        raise ModelError(f"{name}: unknown UNet architecture (missing {exc})") from exc
    if unet.in_channels not in (4, 8, 9):  # 9: inpainting, 8: instruct-pix2pix (sampling adds the channels)
        raise ModelError(f"{name} is an unknown model ({unet.in_channels} UNet input channels): not supported")
    clip_l1 = parse_clip(src, "l", CLIP_L_SD1)
    clip_h = parse_clip(src, "h", CLIP_H_SD2)
    clip_lx = parse_clip(src, "l", CLIP_L_SDXL)
    clip_gx = parse_clip(src, "g", CLIP_G_SDXL)
    clip_gr = parse_clip(src, "g", CLIP_G_REFINER)
    vae = parse_vae(src, VAE_PREFIX)
    found = (f"context_dim={unet.context_dim}, adm={unet.adm}, model_channels={unet.model_channels}, "
             f"linear_proj={unet.linear_proj}")
    family: str
    clips: tuple[ClipLayout, ...]
    if clip_l1 is not None and not clip_l1.openclip and unet.adm is None and unet.context_dim == clip_l1.width:
        family, clips = "sd1", (clip_l1,)
    elif clip_h is not None and clip_h.openclip and unet.adm is None and unet.context_dim == clip_h.width:
        family, clips = "sd2", (clip_h,)
    elif (clip_lx is not None and clip_gx is not None and clip_gx.projection is not None
          and unet.context_dim == clip_lx.width + clip_gx.width and unet.adm == clip_gx.projection + SDXL_ADM_SIZES):
        family, clips = "sdxl", (clip_lx, clip_gx)
    elif clip_gr is not None and unet.adm is not None and unet.context_dim == clip_gr.width:
        raise ModelError(f"{name} is an SDXL refiner ({found}): not supported yet")
    else:
        encoders = [c.prefix for c in (clip_l1, clip_h, clip_lx, clip_gx, clip_gr) if c is not None]
        raise ModelError(
            f"{name}: unknown architecture ({found}; text encoders at {encoders or 'none'}); "
            "supported: SD1.x, SD2.x, SDXL base"
        )
    if vae is None:
        raise ModelError(f"{name}: no VAE ({VAE_PREFIX}*) in the checkpoint")
    for key in ("edm_vpred.sigma_max", "edm_mean"):
        if src.has(key):
            raise ModelError(f"{name}: EDM-parameterised model ({key}) not supported yet")
    prediction = "eps"
    if family == "sd2":
        prediction = "v" if sd2_is_vpred(src) else "eps"
    elif family == "sdxl" and src.has("v_pred"):
        prediction = "v"
    return Recognition(family, prediction, family == "sdxl" and src.has("ztsnr"), unet, clips, vae)


def vpred_probe_key(keys: list[str], prefix: str = UNET_PREFIX) -> str | None:
    """The bias ComfyUI inspects to tell SD2 768-v from 512-base: the first transformer's norm1 bias in the
    last output block (block 11 in the real layout); for other layouts, the last output block that has one."""
    rx = re.compile(re.escape(prefix) + r"output_blocks\.(\d+)\.1\.transformer_blocks\.0\.norm1\.bias$")
    found = sorted((int(m.group(1)), k) for k in keys if (m := rx.match(k)))
    return found[-1][1] if found else None


def sd2_is_vpred(src: TensorSource, prefix: str = UNET_PREFIX) -> bool:
    key = vpred_probe_key(src.keys, prefix)
    if key is None:
        return False
    return float(src.get(key).float().std(unbiased=False)) > 0.09
