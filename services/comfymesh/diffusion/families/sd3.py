"""SD3 / SD3.5 (Stability's MMDiT): recognise a diffusion model in ComfyUI's key layout from its keys and shapes,
build diffusers' SD3Transformer2DModel from them, and call it with ComfyUI's conventions.

The layout (`joint_blocks.N.{x_block,context_block}`, `x_embedder.proj`, `context_embedder`, `y_embedder`,
`pos_embed`) is read at any depth and width, so reduced test models load. As in ComfyUI, heads are 64 wide
(width / 64 heads), `ln_q` norms mean RMS q/k norms (SD3.5) and `x_block.attn2` marks the MMDiT-X blocks with a
second self-attention (SD3.5 medium). The model takes σ·1000 as its time and predicts the flow velocity
(x0 = x − σ·out); odd latents are padded circularly to whole patches and the learned position table is
cropped around its centre, as ComfyUI's MMDiT does.
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

from comfymesh.contracts.errors import ModelError
from comfymesh.contracts.handles import ModelHandle
from comfymesh.diffusion.families.loading import compute_dtype, load_diffusion_model, load_fp8_aware, model_prefix
from comfymesh.diffusion.families.registry import (
    BuiltModel,
    Conditioning,
    DiffusionFamily,
    VaeKind,
    flow_shift_sampling,
)
from comfymesh.diffusion.fast.denoiser import StaticForm, plain_inputs
from comfymesh.diffusion.latents.formats import LatentFormat
from comfymesh.diffusion.models.flow_lora import key_map
from comfymesh.diffusion.models.recognise import ClipLayout, Recognition, UNetLayout
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.sampling.flow_sampling import FlowModelSampling
from comfymesh.diffusion.sampling.guidance import UNetFn
from comfymesh.diffusion.sampling.ksampler import SamplingModel
from comfymesh.diffusion.text import encoder_files
from comfymesh.diffusion.text.sd3_text import T5Encode, encode_t5_weighted, sd3_conditioning
from comfymesh.diffusion.text.t5 import load_t5_file

NAME = "sd3"
SHIFT, MULTIPLIER = 3.0, 1000.0  # ComfyUI's SD3 sampling settings: shift 3, the model's time is σ·1000
HEAD_DIM = 64
_MARKER = "joint_blocks.0.context_block.attn.qkv.weight"

# ComfyUI's SD3 latent format: the 16-channel SD3 VAE's latents centred by 0.0609, scaled by 1.5305
SD3_LATENTS = LatentFormat(
    1.5305,
    ((-0.0922, -0.0175, 0.0749), (0.0311, 0.0633, 0.0954), (0.1994, 0.0927, 0.0458), (0.0856, 0.0339, 0.0902),
     (0.0587, 0.0272, -0.0496), (-0.0006, 0.1104, 0.0309), (0.0978, 0.0306, 0.0427), (-0.0042, 0.1038, 0.1358),
     (-0.0194, 0.0020, 0.0669), (-0.0488, 0.0130, -0.0268), (0.0922, 0.0988, 0.0951), (-0.0278, 0.0524, -0.0542),
     (0.0332, 0.0456, 0.0895), (-0.0069, -0.0030, -0.0810), (-0.0596, -0.0465, -0.0293), (-0.1448, -0.1463, -0.1189)),
    (0.2394, 0.2135, 0.1925),
    shift_factor=0.0609,
)


@dataclass(frozen=True)
class SD3Layout:
    prefix: str
    in_channels: int
    out_channels: int
    patch: int
    width: int
    n_blocks: int
    context_dim: int  # the text features' width (CLIP-L ‖ CLIP-G padded, T5-XXL: 4096)
    pooled_dim: int  # CLIP-L pooled ‖ CLIP-G pooled (2048)
    pos_embed_max: int
    dual_attention: tuple[int, ...]  # MMDiT-X blocks (SD3.5 medium)
    qk_norm: bool  # RMS q/k norms (SD3.5)

    @property
    def heads(self) -> int:
        return self.width // HEAD_DIM

    @property
    def variant(self) -> str:
        if self.dual_attention:
            return "SD3.5 medium (MMDiT-X)"
        return "SD3.5 large" if self.qk_norm else "SD3 medium"

    def describe(self) -> str:
        return (f"{self.variant} (width {self.width}, {self.n_blocks} joint blocks, text width {self.context_dim}, "
                f"pooled width {self.pooled_dim})")


def _blocks(keys: list[str], prefix: str) -> list[int]:
    rx = re.compile(re.escape(prefix) + r"joint_blocks\.(\d+)\.")
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def parse_sd3(src: TensorSource) -> SD3Layout | None:
    """The SD3 layout of a file, None if it is not one; ModelError if it is one we cannot build."""
    p = model_prefix(src, (_MARKER, "x_embedder.proj.weight"))
    if p is None:
        return None
    width, in_channels, patch, _ = src.shape(p + "x_embedder.proj.weight")
    blocks = _blocks(src.keys, p)
    missing = [k for k in ("context_embedder.weight", "y_embedder.mlp.0.weight", "pos_embed",
                           "final_layer.linear.weight") if not src.has(p + k)]
    if missing or blocks != list(range(len(blocks))) or width % HEAD_DIM:
        raise ModelError(f"{src.path.name}: an MMDiT (SD3) diffusion model this stage cannot build (width {width}, "
                         f"blocks {blocks[:3]}…, missing {missing}); it needs 64-wide heads, a text and a pooled "
                         "embedder and a learned position table")
    if src.has(p + "context_processor.layers.0.attn.qkv.weight") or src.has(p + "register"):
        raise ModelError(f"{src.path.name}: an MMDiT with a context processor or registers is not SD3: not supported")
    n_patches = src.shape(p + "pos_embed")[1]
    dual = tuple(i for i in blocks if src.has(f"{p}joint_blocks.{i}.x_block.attn2.qkv.weight"))
    return SD3Layout(
        prefix=p, in_channels=in_channels, out_channels=src.shape(p + "final_layer.linear.weight")[0] // patch**2,
        patch=patch, width=width, n_blocks=len(blocks), context_dim=src.shape(p + "context_embedder.weight")[1],
        pooled_dim=src.shape(p + "y_embedder.mlp.0.weight")[1], pos_embed_max=round(math.sqrt(n_patches)),
        dual_attention=dual, qk_norm=src.has(p + _MARKER.replace("qkv.weight", "ln_q.weight")),
    )


def model_config(layout: SD3Layout) -> dict[str, Any]:
    return {
        "sample_size": 128, "patch_size": layout.patch, "in_channels": layout.in_channels,
        "num_layers": layout.n_blocks, "attention_head_dim": HEAD_DIM, "num_attention_heads": layout.heads,
        "joint_attention_dim": layout.context_dim, "caption_projection_dim": layout.width,
        "pooled_projection_dim": layout.pooled_dim, "out_channels": layout.out_channels,
        "pos_embed_max_size": layout.pos_embed_max, "dual_attention_layers": layout.dual_attention,
        "qk_norm": "rms_norm" if layout.qk_norm else None,
    }


def build_sd3(src: TensorSource, layout: SD3Layout, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The diffusers model with the file's weights on `device`: fp8 linears (fp8 and scaled-fp8 files) stay fp8
    and compute in `dtype` per layer, as ComfyUI runs them; the rest in `dtype`."""
    from diffusers import SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers as convert

    return load_fp8_aware(src, layout.prefix, lambda: SD3Transformer2DModel(**model_config(layout)), convert,
                          device, dtype, "SD3")



def load_sd3(src: TensorSource, layout: SD3Layout, device: torch.device,
             storage: torch.dtype | None = None) -> torch.nn.Module:
    """The model in its compute dtype; an fp8 `storage` (UNETLoader's weight_dtype) rounds bf16/fp16 weights
    to that format first (fp8 files are fp8 already)."""
    return load_diffusion_model(src, "SD3", lambda: build_sd3(src, layout, device, compute_dtype(device)), storage)


def sd3_fn(model: torch.nn.Module) -> UNetFn:
    """The model as the denoiser calls it: (x [N, C, h, w], timestep σ·1000 [N], text features [N, T, D],
    pooled y [N, P], optionally SD3.5 ControlNets' `residuals`) → the flow velocity, ComfyUI's output
    (x0 = x − σ·out)."""

    def run(x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor | None,
            residuals: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        return sd3_with_residuals(model, x, t, ctx, y, residuals)

    return run


def sd3_with_residuals(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor,
                       y: torch.Tensor | None, residuals: Sequence[torch.Tensor]) -> torch.Tensor:
    """sd3_fn's call with ControlNet residuals: residual i is added to the image tokens after joint block i
    (all blocks, the last included, as ComfyUI's MMDiT does; diffusers' own argument skips the last)."""
    if y is None:
        raise ModelError("the SD3 model needs the conditioning's pooled output (CLIP-L ‖ CLIP-G)")
    config: Any = model.config
    h, w = x.shape[-2:]
    patch = int(config.patch_size)
    pad_h, pad_w = (-h) % patch, (-w) % patch
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="circular")
    blocks: Any = model.transformer_blocks
    hooks = [block.register_forward_hook(_adder(add)) for block, add in zip(blocks, residuals, strict=False)]
    try:
        out: torch.Tensor = model(hidden_states=x, encoder_hidden_states=ctx.to(x.dtype),
                                  pooled_projections=y.to(x.dtype), timestep=t, return_dict=False)[0]
    finally:
        for hook in hooks:
            hook.remove()
    return out[:, :, :h, :w]


def _adder(add: torch.Tensor) -> Callable[[torch.nn.Module, Any, Any], Any]:
    def hook(_block: torch.nn.Module, _args: Any, out: Any) -> Any:
        context, image = out  # a joint block answers (text tokens, image tokens)
        return context, image + add.to(image.dtype)

    return hook


def recognition(layout: SD3Layout) -> Recognition:
    """What the model cache keeps of the file: the family, the flow prediction, and the sizes sampling reads
    (latent channels, text width, pooled width as the ADM size)."""
    summary = UNetLayout(in_channels=layout.in_channels, out_channels=layout.out_channels,
                         model_channels=layout.width, level_channels=(), res_blocks=0, depth=(), up_depth=(),
                         mid_depth=0, context_dim=layout.context_dim, linear_proj=True, adm=layout.pooled_dim)
    return Recognition(NAME, "flow", False, summary, (), None)


def sampling_model(model: torch.nn.Module, rec: Recognition, device: torch.device) -> SamplingModel:
    """The denoiser's view of a loaded SD3 model, with ComfyUI's default flow sampling (shift 3, time σ·1000).
    Text tokens join the image's in one attention, so contexts of other lengths never share a call."""
    param = next(model.parameters())
    return SamplingModel(
        unet=sd3_fn(model), sampling=FlowModelSampling(SHIFT, MULTIPLIER), prediction="flow",
        latent_format=SD3_LATENTS, family=NAME, context_dim=rec.unet.context_dim, adm=rec.unet.adm, device=device,
        dtype=param.dtype, in_channels=rec.unet.in_channels, joint_context=True, pooled_y=True,
        control_transformer=model,
    )


# --- text encoders: TripleCLIPLoader, CLIPLoader / DualCLIPLoader type "sd3", and the checkpoint's ---

CHECKPOINT_ENCODERS = {"l": "text_encoders.clip_l.transformer.", "g": "text_encoders.clip_g.transformer."}
CLIP_G_LAYERS = 32  # CLIP-G (bigG) has 32 blocks, CLIP-L 12: ComfyUI tells them apart by depth


def clip_roles(layouts: list[ClipLayout]) -> list[str]:
    """Which CLIP tower is L and which G: by the released widths (768, 1280), else by depth (G is the
    deeper, as ComfyUI tells them), else the narrower of two is L; one reduced tower with a projection is G."""
    roles = []
    for lay in layouts:
        role = {768: "l", 1280: "g"}.get(lay.width)
        if role is None and lay.layers >= CLIP_G_LAYERS:
            role = "g"
        roles.append(role)
    if len(layouts) == 2 and None in roles:
        narrow = min(range(2), key=lambda i: (layouts[i].width, layouts[i].layers))
        roles = ["l" if i == narrow else "g" for i in range(2)]
    return [r or ("g" if lay.projection is not None else "l") for r, lay in zip(roles, layouts, strict=True)]


def load_text_encoder_files(paths: list[Path], device: torch.device) -> dict[str, Any]:
    """Role ("l", "g", "t5") → encoder for the files of a CLIP loader of type sd3 (any of CLIP-L, CLIP-G,
    T5-XXL, in any order); ModelError naming each file and what it holds."""
    files = encoder_files.sort_encoder_files(paths)
    clips = files.clips
    roles = clip_roles([lay for _, lay in clips])
    if (len(files.t5s) > 1 or len(set(roles)) != len(roles)
            or any(lay.openclip and lay.width == 1024 for _, lay in clips)):
        raise ModelError("CLIP type 'sd3' takes at most one each of CLIP-L, CLIP-G and T5-XXL; found "
                         f"{files.found()}")
    out: dict[str, Any] = {role: encoder_files.build_clip_tower(src, lay, device, role=role)
                           for (src, lay), role in zip(clips, roles, strict=True)}
    if files.t5s:
        out["t5"] = load_t5_file(files.t5s[0], device)
    return out


def load_checkpoint_encoders(src: TensorSource, device: torch.device) -> dict[str, Any]:
    """The text encoders an all-in-one SD3 checkpoint holds (ComfyUI loads whichever are there)."""
    return encoder_files.load_checkpoint_encoders(src, CHECKPOINT_ENCODERS, device)


def encode(text: str, encoders: dict[str, Any], stop_at_clip_layer: int | None = None) -> list[list[Any]]:
    """CLIPTextEncode's conditioning with an SD3 CLIP: the same prompt to every encoder."""
    cond, pooled = sd3_conditioning(encoders, text, text, text, stop_at_clip_layer, t5_encode=t5_encode_fn())
    return [[cond, {"pooled_output": pooled}]]


def encode_sd3_node(encoders: dict[str, Any], clip_l: str, clip_g: str, t5xxl: str, empty_padding: str,
                    stop_at_clip_layer: int | None = None) -> list[list[Any]]:
    """CLIPTextEncodeSD3: a prompt per encoder; with empty_padding "none" an empty prompt gives no tokens."""
    def text(s: str) -> str | None:
        return None if not s and empty_padding == "none" else s

    cond, pooled = sd3_conditioning(encoders, text(clip_l), text(clip_g), text(t5xxl), stop_at_clip_layer,
                                    t5_encode=t5_encode_fn())
    return [[cond, {"pooled_output": pooled}]]


def t5_encode_fn() -> T5Encode:
    """SD3's T5-XXL encoding (77-token minimum, no truncation, no attention mask)."""
    return encode_t5_weighted


class SD3Family:
    """SD3 / SD3.5 in the family registry: CLIP type `sd3` (CLIP-L, CLIP-G, T5-XXL files in any mix), the
    all-in-one checkpoint's encoders, SD3's latents and 16-channel VAE (FLUX's architecture), flow sampling
    with shift 3. Text tokens join the image's in one attention, so calls never batch across jobs; LoRA; the
    fast path."""

    name = NAME
    clip_types: tuple[str, ...] = ("sd3",)
    latent_format: LatentFormat = SD3_LATENTS
    vae_kind: VaeKind = "flux16"
    batches = False
    fast_path = True
    lora = True

    def recognise(self, src: TensorSource) -> SD3Layout | None:
        return parse_sd3(src)

    def build(self, src: TensorSource, layout: SD3Layout, device: torch.device,
              weight_dtype: torch.dtype | None) -> BuiltModel:
        from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers as convert

        return BuiltModel(recognition(layout), load_sd3(src, layout, device, weight_dtype),
                          lora_map=key_map(src, layout.prefix, convert))

    def sampling_model(self, module: torch.nn.Module, rec: Recognition, device: torch.device) -> SamplingModel:
        return sampling_model(module, rec, device)

    def static_form(self, module: torch.nn.Module) -> StaticForm:
        return StaticForm(plain_inputs, sd3_fn(module))

    def load_text_encoders(self, clip_type: str, paths: list[Path], device: torch.device) -> dict[str, Any]:
        return load_text_encoder_files(paths, device)

    def load_checkpoint_encoders(self, src: TensorSource, device: torch.device) -> dict[str, Any]:
        return load_checkpoint_encoders(src, device)

    def encode(self, text: str, encoders: dict[str, Any], clip: ModelHandle) -> Conditioning:
        return encode(text, encoders, clip.get("stop_at_clip_layer"))

    def model_sampling(self, record: dict[str, Any], sm: SamplingModel) -> SamplingModel:
        return flow_shift_sampling(record, sm)


FAMILY: DiffusionFamily = SD3Family()
