"""Recognise the separate files of ComfyUI's split loaders: a diffusion model (UNETLoader, models/diffusion_models)
and text encoders (CLIPLoader / DualCLIPLoader, models/text_encoders), from keys and shapes as for checkpoints.

A diffusion-model file is the LDM UNet state dict, bare (`input_blocks.…`) or with a checkpoint's
`model.diffusion_model.` prefix. A text encoder file is a Hugging Face CLIPTextModel(WithProjection) state dict
(`text_model.…`, ComfyUI's clip_l / clip_g) or an OpenCLIP text tower (`token_embedding.weight`, ...).
"""

from __future__ import annotations

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.families import registry as families
from comfymesh.diffusion.models.recognise import (
    SDXL_ADM_SIZES,
    UNET_PREFIX,
    ClipLayout,
    Recognition,
    found_summary,
    parse_clip,
    parse_unet,
    parse_vae,
    sd2_is_vpred,
)
from comfymesh.diffusion.models.tensor_source import TensorSource

# the text tower widths of the released encoders: CLIP-L (SD1, SDXL), OpenCLIP-H (SD2), OpenCLIP-bigG (SDXL)
ROLE_BY_WIDTH = {768: "l", 1024: "h", 1280: "g"}
ROLE_NAMES = {"l": "CLIP-L", "h": "OpenCLIP-H", "g": "CLIP-G"}
SDXL_REFINER_ADM_EXTRA = 1280  # the refiner's ADM: pooled CLIP-G width + five 256-wide size/score embeddings


def unet_prefix(src: TensorSource) -> str:
    """Where the UNet lives in a diffusion-model file: at the root, or under a checkpoint's prefix."""
    if src.has("input_blocks.0.0.weight"):
        return ""
    if src.has(UNET_PREFIX + "input_blocks.0.0.weight"):
        return UNET_PREFIX
    raise ModelError(f"{src.path.name} is not a diffusion model (UNet): {_what_it_holds(src)}")


def recognise_unet_file(src: TensorSource) -> tuple[Recognition, str]:
    """The family, prediction and UNet layout of a diffusion-model file, and the prefix of its keys."""
    name = src.path.name
    prefix = unet_prefix(src)
    try:
        unet = parse_unet(src, prefix)
    except (KeyError, StopIteration, IndexError) as exc:
        raise ModelError(f"{name}: unknown UNet architecture (missing {exc})") from exc
    if unet.in_channels != 4:
        raise ModelError(f"{name} is a UNet with {unet.in_channels} input channels (inpainting or "
                         "instruct-pix2pix): not supported yet")
    found = f"context_dim={unet.context_dim}, adm={unet.adm}, linear_proj={unet.linear_proj}"
    if unet.adm is None:
        # SD1 projects its transformers with 1×1 convolutions, SD2 with linear layers
        family = "sd2" if unet.linear_proj else "sd1"
    elif unet.context_dim + SDXL_REFINER_ADM_EXTRA == unet.adm:
        raise ModelError(f"{name} is an SDXL refiner UNet ({found}): not supported yet")
    elif unet.adm > SDXL_ADM_SIZES:
        family = "sdxl"
    else:
        raise ModelError(f"{name}: unknown UNet architecture ({found}); supported: SD1.x, SD2.x, SDXL base")
    vpred = (family == "sd2" and sd2_is_vpred(src, prefix)) or (family == "sdxl" and src.has("v_pred"))
    return Recognition(family, "v" if vpred else "eps", family == "sdxl" and src.has("ztsnr"), unet, (), None), prefix


def text_encoder_layout(src: TensorSource) -> ClipLayout:
    """The text encoder of a file, its role ("l", "h" or "g") told by its width; at other widths (small test
    models) by its form: an OpenCLIP tower is H, a Hugging Face one with a projection is G, else L."""
    found = parse_clip(src, "l", "")
    if found is None:
        raise ModelError(f"{src.path.name} is not a CLIP text encoder: {_what_it_holds(src)}")
    role = ROLE_BY_WIDTH.get(found.width)
    if role is None:
        role = "h" if found.openclip else ("g" if found.projection is not None else "l")
    return ClipLayout(role, found.prefix, found.openclip, found.vocab, found.width, found.layers, found.intermediate,
                      found.positions, found.projection)


def describe_encoder(layout: ClipLayout) -> str:
    form = "OpenCLIP" if layout.openclip else "Hugging Face"
    return f"{ROLE_NAMES[layout.role]} ({form} naming, width {layout.width}, {layout.layers} layers)"


def _what_it_holds(src: TensorSource) -> str:
    if parse_vae(src, "") is not None or parse_vae(src, "first_stage_model.") is not None:
        return f"it holds a VAE ({found_summary(src)})"
    if any(k.startswith(UNET_PREFIX) for k in src.keys) or src.has("input_blocks.0.0.weight"):
        return f"it holds a diffusion model (UNet) ({found_summary(src)})"
    if parse_clip(src, "l", "") is not None:
        return f"it holds a text encoder ({found_summary(src)})"
    return f"found {found_summary(src)}"


# the UNet families' CLIP loader types, with the family each gives; registered families add theirs
UNET_CLIP_TYPES = {"stable_diffusion": ("sd1", "sd2"), "sdxl": ("sdxl",)}


def supported_clip_types() -> list[str]:
    """Every CLIP loader type this build runs: the UNet families' and the registered families'."""
    return [*UNET_CLIP_TYPES, *(t for f in families.families() for t in f.clip_types)]


class UnsupportedClipType(ModelError):
    """A CLIP loader type that ComfyUI declares and this build cannot run yet."""


def check_clip_type(clip_type: str) -> None:
    supported = supported_clip_types()
    if clip_type not in supported:
        raise UnsupportedClipType(f"CLIP type {clip_type!r} is not supported yet (model families: issue 15); "
                                  f"supported: {', '.join(supported)}")


def assign_encoders(clip_type: str, sources: list[TensorSource]) -> tuple[str, dict[str, tuple[TensorSource, ClipLayout]]]:
    """The family and the encoder per role for a CLIP loader's files of `clip_type`, or ModelError naming each
    file and what it holds."""
    if clip_type not in UNET_CLIP_TYPES:
        check_clip_type(clip_type)
        raise ModelError(f"CLIP type {clip_type!r} loads through its family, not as CLIP towers")
    layouts = [(src, text_encoder_layout(src)) for src in sources]
    found = "; ".join(f"{src.path.name}: {describe_encoder(lay)}" for src, lay in layouts)
    if clip_type == "stable_diffusion":
        (src, lay), = layouts
        if lay.role == "l" and not lay.openclip:
            return "sd1", {"l": (src, lay)}
        if lay.role == "h":
            return "sd2", {"h": (src, _as_role(lay, "h"))}
        raise ModelError(f"CLIP type 'stable_diffusion' takes CLIP-L (SD1.x) or OpenCLIP-H (SD2.x); found {found}")
    # sdxl: one CLIP-L and one CLIP-G, in either order
    ls = [(src, lay) for src, lay in layouts if lay.role == "l"]
    gs = [(src, lay) for src, lay in layouts if lay.role != "l" and lay.projection is not None]
    if len(ls) != 1 or len(gs) != 1:
        raise ModelError(f"CLIP type 'sdxl' takes one CLIP-L and one CLIP-G file; found {found}")
    return "sdxl", {"l": ls[0], "g": (gs[0][0], _as_role(gs[0][1], "g"))}


def _as_role(layout: ClipLayout, role: str) -> ClipLayout:
    return ClipLayout(role, layout.prefix, layout.openclip, layout.vocab, layout.width, layout.layers,
                      layout.intermediate, layout.positions, layout.projection)
