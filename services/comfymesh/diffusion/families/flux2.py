"""FLUX.2 (Dev, Klein 4B/9B and their base models): recognise a diffusion model in ComfyUI's key layout (FLUX's
`double_blocks` / `single_blocks` with the shared `double_stream_modulation_img/txt` and `single_stream_modulation`,
no `vector_in`), bare or under `model.diffusion_model.`, build diffusers' Flux2Transformer2DModel from its shapes,
and call it as ComfyUI calls its Flux2 model.

Read at any width and depth so reduced test models load; the heads are the width over the q/k-norm width (ComfyUI
0.8.0 fixes 48, Dev's count). What shapes cannot tell is fixed as ComfyUI fixes it: 1×1 patches of the 128-channel
latent, RoPE θ 2000 over four axes (index, row, column, text position) splitting the head in quarters, timestep
and guidance embedded at 1000·value, the text padded at the front with zeros to 512 tokens, reference latents
placed by `index` in steps of 10. fp8 and scaled-fp8 weights stay fp8. Text encoders: Klein's Qwen3
(`text.klein_text`), Dev's Mistral 3 Small with the tokenizer its file carries (`text.mistral_text`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from comfymesh.contracts.errors import ModelError
from comfymesh.contracts.handles import ModelHandle
from comfymesh.diffusion.families.exact_time import feed
from comfymesh.diffusion.families.flux import DEFAULT_GUIDANCE, comfy_guidance, flux_y, reference_places
from comfymesh.diffusion.families.loading import compute_dtype, load_diffusion_model, load_fp8_aware, model_prefix
from comfymesh.diffusion.families.registry import (
    BuiltModel,
    Conditioning,
    DiffusionFamily,
    VaeKind,
    flow_shift_sampling,
)
from comfymesh.diffusion.fast.denoiser import StaticForm
from comfymesh.diffusion.latents.formats import FLUX2, LatentFormat
from comfymesh.diffusion.models.flow_lora import key_map, linear1_qkv
from comfymesh.diffusion.models.fp8_weights import is_fp8
from comfymesh.diffusion.models.recognise import Recognition, UNetLayout
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.sampling.flux_sampling import FluxModelSampling
from comfymesh.diffusion.sampling.ksampler import SamplingModel
from comfymesh.diffusion.text.klein_text import encode_klein, load_klein_encoder
from comfymesh.diffusion.text.mistral_text import load_mistral_encoder, parse_mistral
from comfymesh.diffusion.text.qwen3 import parse_qwen3

NAME = "flux2"
_MARKERS = ("double_blocks.0.img_attn.norm.key_norm.scale", "img_in.weight", "double_stream_modulation_img.lin.weight")
SHIFT = 2.02  # ComfyUI's Flux2 sampling setting (ModelSamplingFlux's μ)
ROPE_THETA = 2000
TEXT_LENGTH = 512  # ComfyUI's Flux2 pads shorter contexts at the front to this many tokens
REF_METHODS = ("index", "offset", "uxo")  # how reference latents are placed (ComfyUI's default for FLUX.2: index)
REF_INDEX_STEP = 10.0


@dataclass(frozen=True)
class Flux2Layout:
    prefix: str
    width: int
    heads: int
    head_dim: int
    depth: int
    depth_single: int
    in_channels: int
    out_channels: int
    context_dim: int  # the text encoder's features: 3 Qwen3 (Klein) or Mistral (Dev) hidden states side by side
    guidance: bool  # Dev embeds distilled guidance; Klein does not
    mlp_ratio: float

    @property
    def axes_dims(self) -> tuple[int, int, int, int]:
        quarter = self.head_dim // 4
        return quarter, quarter, quarter, quarter

    def describe(self) -> str:
        kind = "Dev-type, guidance-distilled" if self.guidance else "Klein-type"
        return (f"FLUX.2 {kind} (width {self.width}, {self.depth}+{self.depth_single} blocks, text width "
                f"{self.context_dim})")


def _count(keys: list[str], prefix: str, group: str) -> int:
    rx = re.compile(re.escape(prefix + group) + r"\.(\d+)\.")
    return len({m.group(1) for k in keys if (m := rx.match(k))})


def parse_flux2(src: TensorSource) -> Flux2Layout | None:
    """The FLUX.2 layout of a file, None if it is not one; ModelError if it is one we cannot build."""
    p = model_prefix(src, _MARKERS)
    if p is None:
        return None
    width, in_channels = src.shape(p + "img_in.weight")
    head_dim = src.shape(p + "double_blocks.0.img_attn.norm.key_norm.scale")[0]
    mlp_in = src.shape(p + "double_blocks.0.img_mlp.0.weight")[0]  # SwiGLU: gate and value halves
    layout = Flux2Layout(
        prefix=p, width=width, heads=width // head_dim, head_dim=head_dim, depth=_count(src.keys, p, "double_blocks"),
        depth_single=_count(src.keys, p, "single_blocks"), in_channels=in_channels,
        out_channels=src.shape(p + "final_layer.linear.weight")[0], context_dim=src.shape(p + "txt_in.weight")[1],
        guidance=src.has(p + "guidance_in.in_layer.weight"), mlp_ratio=mlp_in / 2 / width,
    )
    if head_dim % 8 or width % head_dim or layout.in_channels != layout.out_channels:
        raise ModelError(f"{src.path.name}: {layout.describe()} has a shape this stage cannot build (head width "
                         f"{head_dim}, {in_channels} channels in, {layout.out_channels} out; needs a head width "
                         "multiple of 8 dividing the width, as many channels out as in)")
    return layout


def model_config(layout: Flux2Layout) -> dict[str, Any]:
    return {
        "patch_size": 1, "in_channels": layout.in_channels, "out_channels": layout.out_channels,
        "num_layers": layout.depth, "num_single_layers": layout.depth_single, "attention_head_dim": layout.head_dim,
        "num_attention_heads": layout.heads, "joint_attention_dim": layout.context_dim, "mlp_ratio": layout.mlp_ratio,
        "axes_dims_rope": layout.axes_dims, "rope_theta": ROPE_THETA, "eps": 1e-6, "guidance_embeds": layout.guidance,
    }


def convert_flux2(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI names → diffusers names with diffusers' converter (which empties the dict it is given); works on
    weights and on per-row scale vectors alike."""
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers

    converted: dict[str, torch.Tensor] = convert_flux2_transformer_checkpoint_to_diffusers(dict(raw))
    return converted


def build_flux2(src: TensorSource, layout: Flux2Layout, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The diffusers model with the file's weights on `device`: fp8 linears stay fp8 and compute in `dtype`,
    the rest in `dtype`."""
    from diffusers import Flux2Transformer2DModel

    return load_fp8_aware(src, layout.prefix, lambda: Flux2Transformer2DModel(**model_config(layout)), convert_flux2,
                          device, dtype, "FLUX.2")



def load_flux2(src: TensorSource, layout: Flux2Layout, device: torch.device,
               storage: torch.dtype | None = None) -> torch.nn.Module:
    """The model in its compute dtype; an fp8 `storage` (UNETLoader's weight_dtype) rounds bf16/fp16 weights
    to that format first (fp8 files are fp8 already)."""
    return load_diffusion_model(src, "FLUX.2", lambda: build_flux2(src, layout, device, compute_dtype(device)),
                                storage)


def image_ids(h: int, w: int, index: float = 0.0, h_offset: int = 0, w_offset: int = 0,
              device: torch.device | None = None) -> torch.Tensor:
    """Position ids [h·w, 4] of an h×w latent's cells: (index, row, column, 0), made on `device` (no host copy:
    the fast path's captured call makes them too)."""
    ids = torch.zeros(h, w, 4, device=device)
    ids[..., 0] = index
    ids[..., 1] = torch.arange(h, dtype=torch.float32, device=device)[:, None] + h_offset
    ids[..., 2] = torch.arange(w, dtype=torch.float32, device=device)[None, :] + w_offset
    return ids.reshape(-1, 4)


def text_ids(length: int, device: torch.device | None = None) -> torch.Tensor:
    """Position ids [length, 4] of the text tokens: their position on the fourth axis."""
    ids = torch.zeros(length, 4, device=device)
    ids[:, 3] = torch.arange(length, dtype=torch.float32, device=device)
    return ids


def reference_ids(refs: list[torch.Tensor], h: int, w: int, method: str) -> list[torch.Tensor]:
    """Position ids of each reference latent, as ComfyUI places them for FLUX.2: `index` (10, 20, …, all at the
    origin), `offset` (index 1, each beside or below the ones before, whichever keeps the canvas squarer) or `uxo`
    (index 0, diagonally past the image and the references before)."""
    sizes = [(int(ref.shape[-2]), int(ref.shape[-1])) for ref in refs]
    places = reference_places(sizes, (h, w), method, REF_INDEX_STEP)
    return [image_ids(rh, rw, *place) for (rh, rw), place in zip(sizes, places, strict=True)]


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """[N, C, h, w] → [N, h·w, C] (1×1 patches)."""
    return x.flatten(2).transpose(1, 2)


class Flux2Call:
    """The model as the denoiser calls it: (x [N, 128, h, w], timestep σ [N], context [N, T, D], y) → the
    velocity, so that x0 = x − σ·out. y is one guidance column [N, 1] (NaN, or a model without guidance: none).
    `refs` are reference latents [1, 128, h, w] whose tokens join the image's and are dropped from the output.
    The fast path takes `static_inputs` (eager: the context padded, the guidance read) and `run`."""

    def __init__(self, model: torch.nn.Module, guidance: bool) -> None:
        self.model = model
        self.guidance = guidance

    def __call__(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor | None,
                 refs: list[torch.Tensor] | None = None, ref_method: str = "index") -> torch.Tensor:
        return self.run(x, t, self.padded(ctx), self.guidance_of(y, x), refs, ref_method)

    def static_inputs(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor | None,
                      refs: list[torch.Tensor] | None = None,
                      ref_method: str = "index") -> tuple[torch.Tensor | None, ...] | None:
        """The fast path's fixed-shape inputs (x, t, padded context, guidance): a disabled guidance is None, a
        bucket of its own; a call with reference latents runs eagerly (None)."""
        if refs:
            return None
        return x, t, self.padded(ctx), self.guidance_of(y, x)

    def run(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, guidance: torch.Tensor | None,
            refs: list[torch.Tensor] | None = None, ref_method: str = "index") -> torch.Tensor:
        """The model on a padded context and the guidance as ComfyUI embeds it (None: left out); no host sync,
        copy or branch on values, so that it can be captured."""
        n, _, h, w = x.shape
        dtype = x.dtype
        img = _tokens(x)
        ids = image_ids(h, w, device=x.device)
        if refs:
            for ref, rid in zip(refs, reference_ids(refs, h, w, ref_method), strict=True):
                img = torch.cat([img, _tokens(ref.to(x.device, dtype)).expand(n, -1, -1)], dim=1)
                ids = torch.cat([ids, rid.to(x.device)])
        t = t.to(x.device).float()
        feed(self.model.get_submodule("time_guidance_embed"), t * 1000, guidance)
        out = self.model(hidden_states=img, encoder_hidden_states=ctx.to(dtype), timestep=t, img_ids=ids,
                         txt_ids=text_ids(ctx.shape[1], device=x.device),
                         guidance=None if guidance is None else guidance / 1000, return_dict=False)[0]
        result: torch.Tensor = out[:, : h * w].transpose(1, 2).reshape(n, -1, h, w)
        return result

    @staticmethod
    def padded(ctx: torch.Tensor) -> torch.Tensor:
        """The context padded at the front to ComfyUI's 512 text tokens."""
        return F.pad(ctx, (0, 0, TEXT_LENGTH - ctx.shape[1], 0)) if ctx.shape[1] < TEXT_LENGTH else ctx

    def guidance_of(self, y: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
        """1000·guidance as ComfyUI embeds it (`comfy_guidance`), or None for a model without guidance or a
        disabled one (NaN): read here, eagerly, since it looks at the values."""
        if not self.guidance or y is None or torch.isnan(y[:, 0]).any():
            return None
        return comfy_guidance(y[:, 0].to(x.device), x.dtype)


def recognition(layout: Flux2Layout) -> Recognition:
    """What the model cache keeps of the file: the family, the flow prediction and the sizes sampling reads
    (latent channels, text width; no pooled vector)."""
    summary = UNetLayout(in_channels=layout.in_channels, out_channels=layout.out_channels,
                         model_channels=layout.width, level_channels=(), res_blocks=0, depth=(), up_depth=(),
                         mid_depth=0, context_dim=layout.context_dim, linear_proj=True, adm=None)
    return Recognition(NAME, "flow", False, summary, (), None)


def entry_y(pooled: Any, extras: dict[str, Any]) -> torch.Tensor:
    """SamplingModel.make_y: the entry's guidance (3.5 when no FluxGuidance set one, NaN when
    FluxDisableGuidance removed it); FLUX.2 takes no pooled vector."""
    return flux_y(None, extras.get("guidance", DEFAULT_GUIDANCE), 0)


def entry_inputs(extras: dict[str, Any]) -> dict[str, Any] | None:
    """SamplingModel.entry_inputs: an entry's reference latents (ReferenceLatent; the latent format is the
    identity) and their placement (ComfyUI places a method it does not know, index_timestep_zero included, as
    `offset`)."""
    refs = extras.get("reference_latents")
    if not refs:
        return None
    method = extras.get("reference_latents_method") or "index"
    return {"refs": [FLUX2.process_in(torch.as_tensor(r).float()) for r in refs],
            "ref_method": method if method in REF_METHODS else "offset"}


def sampling_model(model: torch.nn.Module, rec: Recognition, device: torch.device) -> SamplingModel:
    """The denoiser's view of a loaded FLUX.2 model with ComfyUI's default model sampling (ModelSamplingFlux at
    shift 2.02, σ as the timestep). Text tokens join the image's in one attention, so contexts of other lengths
    never share a call."""
    config: Any = model.config
    param = next(p for p in model.parameters() if not is_fp8(p))
    return SamplingModel(
        unet=Flux2Call(model, bool(config.guidance_embeds)), sampling=FluxModelSampling(SHIFT), prediction="flow",
        latent_format=FLUX2, family=NAME, context_dim=int(config.joint_attention_dim), adm=1, device=device,
        dtype=param.dtype, in_channels=int(config.in_channels), joint_context=True, make_y=entry_y,
        entry_inputs=entry_inputs,
    )


class Flux2Family:
    """FLUX.2 in the family registry: CLIPLoader type `flux2` (Klein's Qwen3 or Dev's Mistral 3 Small, told apart
    by the file), the FLUX.2 VAE's 128-channel latents, ModelSamplingFlux. Text tokens join the image's in one
    attention, so calls never batch across jobs; LoRA; the fast path."""

    name = NAME
    clip_types: tuple[str, ...] = ("flux2",)
    latent_format: LatentFormat = FLUX2
    vae_kind: VaeKind = "other"
    batches = False
    fast_path = True
    lora = True

    def recognise(self, src: TensorSource) -> Flux2Layout | None:
        return parse_flux2(src)

    def build(self, src: TensorSource, layout: Flux2Layout, device: torch.device,
              weight_dtype: torch.dtype | None) -> BuiltModel:
        kmap = key_map(src, layout.prefix, convert_flux2)
        kmap = dataclasses.replace(kmap, fused=linear1_qkv(kmap.file_shapes, layout.width))
        return BuiltModel(recognition(layout), load_flux2(src, layout, device, weight_dtype), lora_map=kmap)

    def sampling_model(self, module: torch.nn.Module, rec: Recognition, device: torch.device) -> SamplingModel:
        return sampling_model(module, rec, device)

    def static_form(self, module: torch.nn.Module) -> StaticForm:
        config: Any = module.config
        call = Flux2Call(module, bool(config.guidance_embeds))
        return StaticForm(call.static_inputs, call.run)

    def load_text_encoders(self, clip_type: str, paths: list[Path], device: torch.device) -> dict[str, Any]:
        if len(paths) != 1:
            raise ModelError(f"CLIP type {clip_type!r} takes one text encoder file, got {len(paths)}")
        src = TensorSource(paths[0])
        if parse_qwen3(src) is None and parse_mistral(src) is not None:
            return {"mistral": load_mistral_encoder(src, device)}
        return {"qwen3": load_klein_encoder(src, device)}

    def encode(self, text: str, encoders: dict[str, Any], clip: ModelHandle) -> Conditioning:
        # three hidden states per token (Klein's Qwen3 or Dev's Mistral); no prompt weights, no pooled output
        if "mistral" in encoders:
            return [[encoders["mistral"].encode(text), {}]]
        return [[encode_klein(encoders["qwen3"], text), {}]]

    def model_sampling(self, record: dict[str, Any], sm: SamplingModel) -> SamplingModel:
        # ModelSamplingFlux's shift; ModelSamplingSD3/AuraFlow replace it as in ComfyUI
        if record["kind"] == "flux":
            return dataclasses.replace(sm, sampling=FluxModelSampling(record["shift"]))
        return flow_shift_sampling(record, sm)


FAMILY: DiffusionFamily = Flux2Family()
