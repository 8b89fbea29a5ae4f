"""Read single-file LDM checkpoints: recognise the family and build the torch modules.

Every size (channels, levels, res blocks, transformer depths, context width, ADM width, CLIP widths and
depths) is read from tensor shapes; only what shapes cannot tell (attention head sizes, activations)
comes from the family, as ComfyUI does. Weights are converted with diffusers' single_file_utils
converters into diffusers/transformers modules built from config dicts computed here.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from comfymesh.errors import ModelError
from comfymesh.logs import log_fields

log = logging.getLogger(__name__)

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SDXL_ADM_SIZES = 6 * 256  # original h/w, crop top/left, target h/w, each a 256-wide sinusoid

# text encoder layouts: (family key, role, prefix, layout)
CLIP_L_SD1 = "cond_stage_model.transformer."
CLIP_H_SD2 = "cond_stage_model.model."
CLIP_L_SDXL = "conditioner.embedders.0.transformer."
CLIP_G_SDXL = "conditioner.embedders.1.model."
CLIP_G_REFINER = "conditioner.embedders.0.model."


class TensorSource:
    """Lazy, memory-mapped access to the tensors of one .safetensors file, with classified errors."""

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        self.path = path
        try:
            self._file = safe_open(str(path), framework="pt", device="cpu")
            self.keys: list[str] = list(self._file.keys())
            self._shapes = {k: tuple(self._file.get_slice(k).get_shape()) for k in self.keys}
        except Exception as exc:
            raise ModelError(
                f"{path.name} is not a readable .safetensors file (corrupt or truncated?): {exc}",
                details=str(path),
            ) from exc
        # a truncated file still has a valid header: check the data really covers every tensor
        self._check_length()

    def _check_length(self) -> None:
        import json
        import struct

        with self.path.open("rb") as fh:
            header_len = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(header_len))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        size = self.path.stat().st_size
        if 8 + header_len + end > size:
            raise ModelError(
                f"{self.path.name} is truncated: its header describes {8 + header_len + end} bytes "
                f"but the file has {size}",
                details=str(self.path),
            )

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def has(self, key: str) -> bool:
        return key in self._shapes

    def get(self, key: str) -> torch.Tensor:
        try:
            return self._file.get_tensor(key)
        except Exception as exc:
            raise ModelError(f"{self.path.name}: cannot read tensor {key}: {exc}") from exc

    def with_prefix(self, prefix: str) -> dict[str, torch.Tensor]:
        return {k: self.get(k) for k in self.keys if k.startswith(prefix)}


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
    return ClipLayout(role, prefix, False, vocab, width, layers, inter, positions, None)


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


def _found_summary(src: TensorSource) -> str:
    prefixes = sorted({".".join(k.split(".")[:2]) for k in src.keys})
    shown = ", ".join(prefixes[:8]) + (", …" if len(prefixes) > 8 else "")
    return f"{len(src.keys)} tensors under {shown}"


def recognise(src: TensorSource) -> Recognition:
    """Tell SD1.x / SD2.x (eps or v) / SDXL base apart from keys and shapes, or raise ModelError."""
    name = src.path.name
    n_unet = sum(k.startswith(UNET_PREFIX) for k in src.keys)
    if n_unet <= 5:
        raise ModelError(f"{name} is not a Stable Diffusion checkpoint: no UNet ({UNET_PREFIX}*) in it; "
                         f"found {_found_summary(src)}")
    try:
        unet = parse_unet(src)
    except (KeyError, StopIteration, IndexError) as exc:
        raise ModelError(f"{name}: unknown UNet architecture (missing {exc})") from exc
    if unet.in_channels != 4:
        kind = {9: "an inpainting", 8: "an instruct-pix2pix"}.get(unet.in_channels, "an unknown")
        raise ModelError(f"{name} is {kind} model ({unet.in_channels} UNet input channels): not supported yet")
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
        prediction = "v" if _sd2_is_vpred(src) else "eps"
    elif family == "sdxl" and src.has("v_pred"):
        prediction = "v"
    return Recognition(family, prediction, family == "sdxl" and src.has("ztsnr"), unet, clips, vae)


def vpred_probe_key(keys: list[str]) -> str | None:
    """The bias ComfyUI inspects to tell SD2 768-v from 512-base: the first transformer's norm1 bias in the
    last output block (block 11 in the real layout); for other layouts, the last output block that has one."""
    rx = re.compile(r"model\.diffusion_model\.output_blocks\.(\d+)\.1\.transformer_blocks\.0\.norm1\.bias$")
    found = sorted((int(m.group(1)), k) for k in keys if (m := rx.match(k)))
    return found[-1][1] if found else None


def _sd2_is_vpred(src: TensorSource) -> bool:
    key = vpred_probe_key(src.keys)
    if key is None:
        return False
    return float(src.get(key).float().std(unbiased=False)) > 0.09


# ---------------------------------------------------------------------------------------------------
# building modules


def unet_config(layout: UNetLayout, family: str) -> dict[str, Any]:
    """A diffusers UNet2DConditionModel config for `layout`."""
    down = ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in layout.depth]
    up = ["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in layout.up_depth]
    if list(reversed(down)) != [b.replace("Up", "Down") for b in up]:
        raise ModelError("UNet output blocks do not mirror the input blocks")
    depth = [d or 1 for d in layout.depth]
    if layout.depth[-1] == 0:
        depth[-1] = layout.mid_depth or 1  # diffusers takes the mid depth from the last level
    elif layout.mid_depth != layout.depth[-1]:
        raise ModelError(f"UNet middle depth {layout.mid_depth} differs from the last level's {layout.depth[-1]}")
    if family == "sd1":
        heads: int | list[int] = 8  # SD1 fixes the head count
    else:
        if any(c % 64 for c, d in zip(layout.level_channels, layout.depth, strict=True) if d):
            raise ModelError(f"UNet attention widths {layout.level_channels} are not multiples of 64-channel heads")
        heads = [max(c // 64, 1) for c in layout.level_channels]
    cfg: dict[str, Any] = {
        "sample_size": 64,
        "in_channels": layout.in_channels,
        "out_channels": layout.out_channels,
        "down_block_types": down,
        "up_block_types": up,
        "mid_block_type": "UNetMidBlock2DCrossAttn" if layout.mid_depth else "UNetMidBlock2D",
        "block_out_channels": list(layout.level_channels),
        "layers_per_block": layout.res_blocks,
        "cross_attention_dim": layout.context_dim,
        "transformer_layers_per_block": depth,
        "reverse_transformer_layers_per_block": [d or 1 for d in layout.up_depth],
        "attention_head_dim": heads,
        "use_linear_projection": layout.linear_proj,
        "upcast_attention": family == "sd2",
    }
    if layout.model_channels != layout.level_channels[0]:
        raise ModelError("UNet first level width differs from its stem width: not representable")
    if layout.adm is not None:
        # y (pooled ‖ size embeddings) is built by us and fed as a projected class label
        cfg["class_embed_type"] = "projection"
        cfg["projection_class_embeddings_input_dim"] = layout.adm
    return cfg


def vae_config(layout: VAELayout) -> dict[str, Any]:
    n = len(layout.level_channels)
    return {
        "in_channels": layout.in_channels,
        "out_channels": layout.out_channels,
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": list(layout.level_channels),
        "layers_per_block": layout.res_blocks,
        "latent_channels": layout.z_channels,
        "norm_num_groups": 32,
        "sample_size": 512,
    }


def clip_config(layout: ClipLayout) -> Any:
    from transformers import CLIPTextConfig

    # heads are not in the shapes: every OpenAI/OpenCLIP text tower uses 64-wide heads (tiny ones: one head)
    heads = layout.width // 64 if layout.width >= 64 else 1
    return CLIPTextConfig(
        vocab_size=layout.vocab,
        hidden_size=layout.width,
        intermediate_size=layout.intermediate,
        num_hidden_layers=layout.layers,
        num_attention_heads=heads,
        max_position_embeddings=layout.positions,
        hidden_act="gelu" if layout.openclip else "quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=layout.projection or layout.width,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407 if layout.role == "l" else 0,
    )


@dataclass(frozen=True)
class Placement:
    """Where and in which dtypes the parts live (ComfyUI: fp32 on CPU; fp16 UNet, bf16 VAE on a GPU)."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    unet_dtype: torch.dtype = torch.float32
    vae_dtype: torch.dtype = torch.float32

    @staticmethod
    def for_device(device: torch.device) -> Placement:
        if device.type == "cuda":
            return Placement(device, torch.float16, torch.bfloat16)
        return Placement(device)


def _materialise(build: Callable[[], Any], state: dict[str, torch.Tensor], what: str, name: str,
                 device: torch.device, dtype: torch.dtype) -> Any:
    """Build a module without allocating random weights, then take the converted weights as its own
    (cast straight to the target device and dtype, so no full-precision copy is ever made)."""
    state = {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)
             for k, v in state.items()}
    with torch.device("meta"):
        module = build()
    result = module.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ModelError(
            f"{name}: the {what} weights do not fit the layout read from the file "
            f"(missing {result.missing_keys[:4]}, unexpected {result.unexpected_keys[:4]})"
        )
    return module


def import_model_code() -> float:
    """Import diffusers' and transformers' model code now (seconds, mostly diffusers' package imports)
    rather than inside the first checkpoint load; returns the seconds it took."""
    start = time.perf_counter()
    import diffusers.loaders.single_file_utils  # noqa: F401
    from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: F401
    from transformers import CLIPTextModel, CLIPTextModelWithProjection  # noqa: F401

    return time.perf_counter() - start


def build_unet(src: TensorSource, rec: Recognition, place: Placement) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    cfg = unet_config(rec.unet, rec.family)
    state = convert_ldm_unet_checkpoint(src.with_prefix(UNET_PREFIX), cfg)
    return _materialise(lambda: UNet2DConditionModel(**cfg), state, "UNet", src.path.name, place.device,
                        place.unet_dtype)


def unet_module_map(src: TensorSource, rec: Recognition) -> dict[str, str]:
    """LDM module name → diffusers module name (for LDM-named LoRA keys), found by running the converter
    on the checkpoint's own keys and matching the tensors it moved."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    markers = {k: torch.empty(0) for k in src.keys if k.startswith(UNET_PREFIX)}
    by_id = {id(v): k[len(UNET_PREFIX):] for k, v in markers.items()}
    out: dict[str, str] = {}
    for new_key, tensor in convert_ldm_unet_checkpoint(markers, unet_config(rec.unet, rec.family)).items():
        old = by_id.get(id(tensor))
        if old is not None:
            out[old.rsplit(".", 1)[0]] = new_key.rsplit(".", 1)[0]
    return out


def build_vae(src: TensorSource, layout: VAELayout, prefix: str, place: Placement) -> torch.nn.Module:
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    cfg = vae_config(layout)
    raw = src.with_prefix(prefix)
    if layout.diffusers_naming:
        state = {k[len(prefix):]: v for k, v in raw.items()}
        for k, v in state.items():  # old diffusers files stored attention projections as 1×1 convs
            if v.ndim == 4 and ".attentions." in k and k.endswith("weight") and v.shape[2:] == (1, 1):
                state[k] = v[:, :, 0, 0]
    else:
        state = convert_ldm_vae_checkpoint(raw, cfg)
    return _materialise(lambda: AutoencoderKL(**cfg), state, "VAE", src.path.name, place.device, place.vae_dtype)


def build_clip(src: TensorSource, layout: ClipLayout, place: Placement) -> torch.nn.Module:
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    cfg = clip_config(layout)
    with_projection = layout.projection is not None and layout.role == "g"
    raw = src.with_prefix(layout.prefix)
    if layout.openclip:
        # a neutral prefix keeps diffusers' SD2 "ignore the last layer" list from dropping our layers
        neutral = {"te." + k[len(layout.prefix):]: v for k, v in raw.items()}
        with torch.device("meta"):
            probe = CLIPTextModel(cfg)
        state = convert_open_clip_checkpoint(probe, neutral, prefix="te.")
    else:
        if not any(k.startswith(layout.prefix + "text_model.") for k in raw):
            raw = {layout.prefix + "text_model." + k[len(layout.prefix):]: v for k, v in raw.items()}
        state = convert_ldm_clip_checkpoint(raw, remove_prefix=layout.prefix)
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    if not with_projection:
        state.pop("text_projection.weight", None)
        # CLIPTextModel has no text_model level in transformers 5.24
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    # ComfyUI holds text encoder weights in fp16 and computes in fp32: round once here
    state = {k: v.to(torch.float16).to(torch.float32) for k, v in state.items()}
    model_cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    module = _materialise(lambda: model_cls(cfg), state, f"text encoder {layout.prefix}", src.path.name,
                          place.device, torch.float32)
    text: Any = module.text_model if with_projection else module
    text.embeddings.position_ids = torch.arange(layout.positions, device=place.device).unsqueeze(0)
    return module


@dataclass
class CheckpointParts:
    """The modules of one checkpoint (float32 on the CPU until placed by the model cache)."""

    recognition: Recognition
    unet: torch.nn.Module
    vae: torch.nn.Module
    clips: dict[str, torch.nn.Module] = field(default_factory=dict)  # role → module
    unet_modules: dict[str, str] = field(default_factory=dict)  # LDM → diffusers module names


def load_checkpoint(path: Path, place: Placement | None = None) -> CheckpointParts:
    """Recognise and build every part of a single-file checkpoint; ModelError on anything unusable."""
    place = place or Placement()
    if not path.is_file():
        raise ModelError(f"checkpoint file {path} does not exist")
    src = TensorSource(path)
    rec = recognise(src)
    assert rec.vae is not None
    clock = [time.perf_counter()]

    def lap() -> float:
        clock.append(time.perf_counter())
        return round(clock[-1] - clock[-2], 2)

    try:
        unet = build_unet(src, rec, place)
        unet_s = lap()
        vae = build_vae(src, rec.vae, VAE_PREFIX, place)
        vae_s = lap()
        clips = {c.role: build_clip(src, c, place) for c in rec.clips}
        clip_s = lap()
        modules = unet_module_map(src, rec)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{path.name}: {rec.family} checkpoint could not be converted: {exc}") from exc
    for m in (unet, vae, *clips.values()):
        m.eval().requires_grad_(False)
        if any(t.is_meta for t in (*m.parameters(), *m.buffers())):
            raise ModelError(f"{path.name}: some weights were not found in the file")
    # where load time goes (first loads include importing diffusers/transformers)
    log.info("checkpoint built", extra=log_fields(file=path.name, family=rec.family, device=str(place.device),
                                                  unet_s=unet_s, vae_s=vae_s, clip_s=clip_s))
    return CheckpointParts(rec, unet, vae, clips, modules)


def load_vae_file(path: Path, place: Placement | None = None) -> torch.nn.Module:
    """A standalone VAE file (LDM or diffusers naming, with or without `first_stage_model.`)."""
    if not path.is_file():
        raise ModelError(f"VAE file {path} does not exist")
    src = TensorSource(path)
    prefix = VAE_PREFIX if any(k.startswith(VAE_PREFIX) for k in src.keys) else ""
    layout = parse_vae(src, prefix)
    if layout is None:
        raise ModelError(f"{path.name} is not a VAE: found {_found_summary(src)}")
    try:
        vae = build_vae(src, layout, prefix, place or Placement())
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{path.name}: VAE could not be converted: {exc}") from exc
    return vae.eval().requires_grad_(False)
