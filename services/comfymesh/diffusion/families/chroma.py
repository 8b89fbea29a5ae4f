"""Chroma (FLUX.1 schnell's transformer with its per-block modulations made by one distilled approximator from
the timestep, a guidance of 0 and each modulation's index): recognise a diffusion model in ComfyUI's key layout
(FLUX's double/single blocks without their modulation linears, `distilled_guidance_layer.*`, no `time_in` /
`vector_in`), build diffusers' ChromaTransformer2DModel from its shapes with diffusers' converter, and call it
with ComfyUI's conventions (σ as the timestep, 2×2 patches and FLUX's (index, row, column) RoPE positions).

Prompts come from T5-XXL alone (CLIPLoader type `chroma`, ComfyUI's PixArt tokenizer: the prompt's tokens and
the end token, no padding unless T5TokenizerOptions asks, no attention mask; the empty prompt that weights are
measured against is all pad tokens). ComfyUI samples it as a discrete flow with shift 1 and multiplier 1.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from comfymesh.contracts.errors import ModelError
from comfymesh.contracts.handles import ModelHandle
from comfymesh.diffusion.families.exact_time import feed
from comfymesh.diffusion.families.flux import PATCH, _patches, convert_flux, image_ids, lora_key_map
from comfymesh.diffusion.families.loading import (
    compute_dtype,
    count_blocks,
    load_diffusion_model,
    load_fp8_aware,
    model_dtype,
    model_prefix,
)
from comfymesh.diffusion.families.registry import (
    BuiltModel,
    Conditioning,
    DiffusionFamily,
    VaeKind,
    flow_shift_sampling,
)
from comfymesh.diffusion.fast.denoiser import StaticForm, plain_inputs
from comfymesh.diffusion.latents.formats import FLUX, LatentFormat
from comfymesh.diffusion.models.recognise import Recognition, UNetLayout
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.sampling.flow_sampling import FlowModelSampling
from comfymesh.diffusion.sampling.ksampler import SamplingModel
from comfymesh.diffusion.text.t5 import encode_t5_weighted, load_t5_file

NAME = "chroma"
SHIFT, MULTIPLIER = 1.0, 1.0  # ComfyUI's Chroma sampling settings
_MARKERS = ("double_blocks.0.img_attn.norm.key_norm.scale", "img_in.weight", "distilled_guidance_layer.in_proj.weight")
APPROXIMATOR_IN = 64  # timestep (16) ‖ guidance (16) ‖ modulation index (32) embeddings


@dataclass(frozen=True)
class ChromaLayout:
    prefix: str
    width: int
    head_dim: int
    depth: int
    depth_single: int
    in_channels: int
    context_dim: int
    approximator_hidden: int
    approximator_layers: int

    @property
    def heads(self) -> int:
        return self.width // self.head_dim

    def describe(self) -> str:
        return (f"Chroma (width {self.width}, {self.depth}+{self.depth_single} blocks, text width "
                f"{self.context_dim})")


def parse_chroma(src: TensorSource) -> ChromaLayout | None:
    """The Chroma layout of a file, None if it is not one; ModelError for Chroma forms this stage cannot build."""
    p = model_prefix(src, _MARKERS)
    if p is None:
        return None
    if src.has(p + "nerf_blocks.0.norm.scale"):
        raise ModelError(f"{src.path.name}: Chroma Radiance (a pixel-space Chroma) is not supported yet")
    width, patch_in = src.shape(p + "img_in.weight")
    layout, approx_in = read_backbone(src, p, width, patch_in // PATCH**2)
    if not buildable(layout, approx_in):
        raise ModelError(f"{src.path.name}: {layout.describe()} has a shape this stage cannot build (approximator "
                         f"input {approx_in}, head width {layout.head_dim})")
    return layout


def read_backbone(src: TensorSource, p: str, width: int, in_channels: int) -> tuple[ChromaLayout, int]:
    """The transformer's layout from the keys under `p` (Chroma's, and Chroma Radiance's backbone: `width` and
    `in_channels` come from their different image embedders) and the approximator's input width."""
    hidden, approx_in = src.shape(p + "distilled_guidance_layer.in_proj.weight")
    layout = ChromaLayout(
        prefix=p, width=width, head_dim=src.shape(p + "double_blocks.0.img_attn.norm.key_norm.scale")[0],
        depth=count_blocks(src.keys, p, "double_blocks"), depth_single=count_blocks(src.keys, p, "single_blocks"),
        in_channels=in_channels, context_dim=src.shape(p + "txt_in.weight")[1],
        approximator_hidden=hidden, approximator_layers=count_blocks(src.keys, p, "distilled_guidance_layer.layers"),
    )
    return layout, approx_in


def buildable(layout: ChromaLayout, approx_in: int) -> bool:
    """Whether diffusers' ChromaTransformer2DModel takes these shapes: ComfyUI's approximator input, and heads a
    multiple of 16 wide that divide the width."""
    return approx_in == APPROXIMATOR_IN and not layout.head_dim % 16 and not layout.width % layout.head_dim


def model_config(layout: ChromaLayout) -> dict[str, Any]:
    hd = layout.head_dim
    return {
        "patch_size": 1, "in_channels": layout.in_channels * PATCH**2, "num_layers": layout.depth,
        "num_single_layers": layout.depth_single, "attention_head_dim": hd, "num_attention_heads": layout.heads,
        "joint_attention_dim": layout.context_dim, "axes_dims_rope": (hd // 8, hd * 7 // 16, hd * 7 // 16),
        "approximator_num_channels": APPROXIMATOR_IN, "approximator_hidden_dim": layout.approximator_hidden,
        "approximator_layers": layout.approximator_layers,
    }


def build_chroma(src: TensorSource, layout: ChromaLayout, device: torch.device,
                 dtype: torch.dtype) -> torch.nn.Module:
    """The diffusers model with the file's weights on `device`: fp8 linears stay fp8 and compute in `dtype`."""
    from diffusers import ChromaTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_chroma_transformer_checkpoint_to_diffusers as convert

    model = load_fp8_aware(src, layout.prefix, lambda: ChromaTransformer2DModel(**model_config(layout)),
                           lambda s: convert_flux(s, layout.width, convert), device, dtype, "Chroma")
    add_modulation_table(model, device)
    return model


def add_modulation_table(model: Any, device: torch.device) -> None:
    """The modulation index table is computed, not stored (a buffer outside the state dict): made here, for the
    length the loaded model has."""
    embed: Any = model.time_text_embed
    embed.mod_proj = modulation_index_table(int(embed.mod_proj.shape[0])).to(device)


def modulation_index_table(length: int) -> torch.Tensor:
    """[length, 32]: the sinusoidal embedding of each modulation's index i at time 1000·i, cosines first, as
    ComfyUI's Chroma embeds its 344 indexes (a reduced model reads only the first ones)."""
    half = 16
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(half, dtype=torch.float32) / half)
    args = (torch.arange(length, dtype=torch.float32) * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def load_chroma(src: TensorSource, layout: ChromaLayout, device: torch.device,
                storage: torch.dtype | None = None) -> torch.nn.Module:
    """The model in its compute dtype; an fp8 `storage` (UNETLoader's weight_dtype) rounds its other weights."""
    return load_diffusion_model(src, "Chroma", lambda: build_chroma(src, layout, device, compute_dtype(device)),
                                storage)


def chroma_fn(model: torch.nn.Module) -> Any:
    """The model as the denoiser calls it: (x [N, C, h, w], σ [N], T5 context [N, T, D], y ignored) → the
    velocity (x0 = x − σ·out). The approximator's guidance input is 0, ComfyUI's default for Chroma."""
    def run(x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        n, _, h, w = x.shape
        img = _patches(x)
        t = t.to(x.device).float()
        feed(model.get_submodule("time_text_embed"), t * 1000)
        out = model(hidden_states=img, encoder_hidden_states=ctx.to(x.dtype), timestep=t,
                     img_ids=image_ids(h, w, device=x.device), txt_ids=torch.zeros(ctx.shape[1], 3, device=x.device),
                     return_dict=False)[0]
        hp, wp = (h + PATCH - 1) // PATCH, (w + PATCH - 1) // PATCH
        c = out.shape[-1] // PATCH**2
        out = out.reshape(n, hp, wp, c, PATCH, PATCH).permute(0, 3, 1, 4, 2, 5).reshape(n, c, hp * PATCH, wp * PATCH)
        result: torch.Tensor = out[:, :, :h, :w]
        return result
    return run


def recognition(layout: ChromaLayout) -> Recognition:
    summary = UNetLayout(in_channels=layout.in_channels, out_channels=layout.in_channels, model_channels=layout.width,
                         level_channels=(), res_blocks=0, depth=(), up_depth=(), mid_depth=0,
                         context_dim=layout.context_dim, linear_proj=True, adm=None)
    return Recognition(NAME, "flow", False, summary, (), None)


def sampling_model(model: torch.nn.Module, rec: Recognition, device: torch.device) -> SamplingModel:
    """The denoiser's view with ComfyUI's Chroma sampling (discrete flow, shift 1, σ as the time)."""
    dtype = model_dtype(model, device)
    return SamplingModel(
        unet=chroma_fn(model), sampling=FlowModelSampling(SHIFT, MULTIPLIER), prediction="flow", latent_format=FLUX,
        family=NAME, context_dim=rec.unet.context_dim, adm=None, device=device, dtype=dtype,
        in_channels=rec.unet.in_channels, joint_context=True,
    )


def encode_chroma(encoders: dict[str, Any], text: str, clip: ModelHandle) -> Conditioning:
    """T5's context of the prompt: its tokens, the end token, then T5TokenizerOptions' padding (none by default:
    min_length 1), weights measured against all-pad tokens."""
    t5 = encoders["t5"]
    min_padding = int(clip.get("t5xxl_min_padding") or 0)
    min_length = max(1, int(clip.get("t5xxl_min_length") or 0))
    return [[encode_t5_weighted(t5, text, min_length, min_padding=min_padding, empty_has_end=False), {}]]


class ChromaFamily:
    """Chroma in the family registry: CLIPLoader type `chroma` (one T5-XXL file), FLUX's latents and 16-channel
    VAE, flow sampling with shift 1 (ModelSamplingAuraFlow / SD3 set theirs). Text tokens join the image's, so
    calls never batch across jobs; LoRA; the fast path."""

    name = NAME
    clip_types: tuple[str, ...] = ("chroma",)
    latent_format: LatentFormat = FLUX
    vae_kind: VaeKind = "flux16"
    batches = False
    fast_path = True
    lora = True

    def recognise(self, src: TensorSource) -> ChromaLayout | None:
        return parse_chroma(src)

    def build(self, src: TensorSource, layout: ChromaLayout, device: torch.device,
              weight_dtype: torch.dtype | None) -> BuiltModel:
        from diffusers.loaders.single_file_utils import convert_chroma_transformer_checkpoint_to_diffusers as convert

        # ComfyUI reads Chroma LoRAs with FLUX's diffusers map, which names no approximator weight
        kmap = dataclasses.replace(lora_key_map(src, layout.prefix, layout.width, convert),
                                   unmapped_modules=("distilled_guidance_layer.",))
        return BuiltModel(recognition(layout), load_chroma(src, layout, device, weight_dtype), lora_map=kmap)

    def sampling_model(self, module: torch.nn.Module, rec: Recognition, device: torch.device) -> SamplingModel:
        return sampling_model(module, rec, device)

    def static_form(self, module: torch.nn.Module) -> StaticForm:
        return StaticForm(plain_inputs, chroma_fn(module))

    def load_text_encoders(self, clip_type: str, paths: list[Path], device: torch.device) -> dict[str, Any]:
        if len(paths) != 1:
            raise ModelError(f"CLIP type 'chroma' takes one T5-XXL file, got {len(paths)}")
        return {"t5": load_t5_file(TensorSource(paths[0]), device)}

    def encode(self, text: str, encoders: dict[str, Any], clip: ModelHandle) -> Conditioning:
        return encode_chroma(encoders, text, clip)

    def model_sampling(self, record: dict[str, Any], sm: SamplingModel) -> SamplingModel:
        return flow_shift_sampling(record, sm)


FAMILY: DiffusionFamily = ChromaFamily()
