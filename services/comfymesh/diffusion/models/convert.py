"""Build diffusers/transformers modules from recognised layouts: config dicts computed here, weights
converted with diffusers' single_file_utils converters and cast straight to their device and dtype."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.models.recognise import UNET_PREFIX, ClipLayout, Recognition, UNetLayout, VAELayout
from comfymesh.diffusion.models.tensor_source import TensorSource


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
        # OpenAI's CLIP-L uses quick GELU, the OpenCLIP towers (H, bigG) exact GELU, whatever their files' naming
        hidden_act="quick_gelu" if layout.role == "l" and not layout.openclip else "gelu",
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


def build_unet(src: TensorSource, rec: Recognition, place: Placement, prefix: str = UNET_PREFIX) -> torch.nn.Module:
    """The UNet of a checkpoint, or of a diffusion-model file (`prefix` "" for a bare one)."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    cfg = unet_config(rec.unet, rec.family)
    # the converter reads checkpoint keys: a bare UNet file gets the prefix it expects
    raw = {UNET_PREFIX + k[len(prefix):]: v for k, v in src.with_prefix(prefix).items() if _is_unet_key(k, prefix)}
    state = convert_ldm_unet_checkpoint(raw, cfg)
    return _materialise(lambda: UNet2DConditionModel(**cfg), state, "UNet", src.path.name, place.device,
                        place.unet_dtype)


def _is_unet_key(key: str, prefix: str) -> bool:
    return key.startswith(prefix) and (bool(prefix) or "." in key)  # a bare file's markers (v_pred) are no weights


def unet_module_map(src: TensorSource, rec: Recognition, prefix: str = UNET_PREFIX) -> dict[str, str]:
    """LDM module name → diffusers module name (for LDM-named LoRA keys), found by running the converter
    on the checkpoint's own keys and matching the tensors it moved."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    markers = {UNET_PREFIX + k[len(prefix):]: torch.empty(0) for k in src.keys if _is_unet_key(k, prefix)}
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
    if not src.has(prefix + "quant_conv.weight"):  # FLUX's 16-channel ae.safetensors has no quant convs
        cfg.update(use_quant_conv=False, use_post_quant_conv=False)
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
    elif not layout.prefix:  # a text encoder file of its own: already transformers' naming
        state = dict(raw)
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
