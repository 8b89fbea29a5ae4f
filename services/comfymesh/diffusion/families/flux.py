"""FLUX.1 (dev, schnell, Kontext, Krea, and Fill / Canny / Depth, whose img_in takes extra concat channels:
sampling/flux_concat.py): recognise a diffusion model in ComfyUI's key layout (`double_blocks`,
`single_blocks`, `img_in`, `txt_in`, `time_in`, `vector_in`, `guidance_in` but on schnell), bare or under a
checkpoint's `model.diffusion_model.`, build diffusers' FluxTransformer2DModel from its shapes, and call it with
ComfyUI's conventions.

Read at any width and depth so reduced test models load. What shapes cannot tell is fixed as ComfyUI fixes it:
2×2 patches, RoPE θ 10 000 over (index, row, column) axes split 16:56:56 of a 128-wide head (reduced heads keep
the proportions), timestep and guidance embedded at 1000·value. fp8 and scaled-fp8 weights stay fp8.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from comfymesh.contracts.errors import ModelError
from comfymesh.contracts.handles import ModelHandle
from comfymesh.diffusion.families.exact_time import feed
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
from comfymesh.diffusion.fast.denoiser import StaticForm
from comfymesh.diffusion.latents.formats import FLUX, LatentFormat
from comfymesh.diffusion.models.flow_lora import LoraKeyMap, key_map, linear1_qkv, model_lock
from comfymesh.diffusion.models.recognise import Recognition, UNetLayout
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.sampling.flux_sampling import FluxModelSampling
from comfymesh.diffusion.sampling.ksampler import SamplingModel
from comfymesh.diffusion.text.flux_text import encode_flux, load_checkpoint_encoders, load_text_encoder_files

NAME = "flux"
PATCH = 2
_MARKERS = ("double_blocks.0.img_attn.norm.key_norm.scale", "img_in.weight", "vector_in.in_layer.weight")
REF_METHODS = ("offset", "index", "uxo")  # FluxKontextMultiReferenceLatentMethod's choices (ComfyUI's default: offset)


@dataclass(frozen=True)
class FluxLayout:
    prefix: str
    width: int
    heads: int
    head_dim: int
    depth: int
    depth_single: int
    in_channels: int
    out_channels: int
    vec_dim: int  # pooled CLIP-L width (vector_in)
    context_dim: int  # T5 width (txt_in)
    guidance: bool  # dev / Kontext / Krea embed distilled guidance; schnell does not
    mlp: int

    @property
    def axes_dims(self) -> tuple[int, int, int]:
        return self.head_dim // 8, self.head_dim * 7 // 16, self.head_dim * 7 // 16

    def describe(self) -> str:
        kind = "dev-type, guidance-distilled" if self.guidance else "schnell-type"
        variant = {self.out_channels: "", 2 * self.out_channels: " Canny/Depth"}.get(self.in_channels, " Fill")
        return (f"FLUX.1{variant} {kind} (width {self.width}, {self.depth}+{self.depth_single} blocks, text width "
                f"{self.context_dim})")


def parse_flux(src: TensorSource) -> FluxLayout | None:
    """The FLUX.1 layout of a file, None if it is not one; ModelError if it is one we cannot build."""
    p = model_prefix(src, _MARKERS)
    if p is None:
        return None
    width, patch_in = src.shape(p + "img_in.weight")
    head_dim = src.shape(p + "double_blocks.0.img_attn.norm.key_norm.scale")[0]
    layout = FluxLayout(
        prefix=p, width=width, heads=width // head_dim, head_dim=head_dim, depth=count_blocks(src.keys, p, "double_blocks"),
        depth_single=count_blocks(src.keys, p, "single_blocks"), in_channels=patch_in // PATCH**2,
        out_channels=src.shape(p + "final_layer.linear.weight")[0] // PATCH**2,
        vec_dim=src.shape(p + "vector_in.in_layer.weight")[1], context_dim=src.shape(p + "txt_in.weight")[1],
        guidance=src.has(p + "guidance_in.in_layer.weight"), mlp=src.shape(p + "double_blocks.0.img_mlp.0.weight")[0],
    )
    if layout.in_channels not in extra_input_channels(layout.out_channels):
        raise ModelError(f"{src.path.name}: {layout.describe()} takes {layout.in_channels} input channels for "
                         f"{layout.out_channels} out, which no FLUX.1 variant does (expected "
                         f"{', '.join(map(str, extra_input_channels(layout.out_channels)))})")
    if head_dim % 16 or layout.mlp != 4 * width:
        raise ModelError(f"{src.path.name}: {layout.describe()} has a shape this stage cannot build (head width "
                         f"{head_dim}, MLP width {layout.mlp}; needs a head width multiple of 16, MLP 4× the width)")
    return layout


def extra_input_channels(latent_channels: int) -> tuple[int, ...]:
    """The input channel counts of FLUX.1's variants: the latent's own; Canny/Depth's latent ‖ control image
    latent; Fill's latent ‖ masked image latent ‖ the 8×8-folded mask (ComfyUI's FluxInpaint: 96)."""
    return latent_channels, 2 * latent_channels, 2 * latent_channels + 64


def model_config(layout: FluxLayout) -> dict[str, Any]:
    return {
        "patch_size": 1, "in_channels": layout.in_channels * PATCH**2,
        "out_channels": layout.out_channels * PATCH**2, "num_layers": layout.depth,
        "num_single_layers": layout.depth_single, "attention_head_dim": layout.head_dim,
        "num_attention_heads": layout.heads, "joint_attention_dim": layout.context_dim,
        "pooled_projection_dim": layout.vec_dim, "guidance_embeds": layout.guidance,
        "axes_dims_rope": layout.axes_dims,
    }


_DIFFUSERS_WIDTH = 3072  # the single-block split width diffusers' converter assumes


def convert_flux(raw: dict[str, torch.Tensor], width: int, converter: Any = None) -> dict[str, torch.Tensor]:
    """ComfyUI names → diffusers names with diffusers' converter (FLUX's, or Chroma's given as `converter`).
    The converter splits each single block's fused linear1 at FLUX.1's full width; that split is done on meta
    stand-ins and the real tensors split at the file's width replace its results. Works on weights and on
    per-row scale vectors alike."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    convert = converter or convert_flux_transformer_checkpoint_to_diffusers
    state = dict(raw)
    own: dict[str, torch.Tensor] = {}
    fused = re.compile(r"single_blocks\.(\d+)\.linear1\.(weight|bias)$")
    for key in [k for k in state if fused.match(k)]:
        i, leaf = fused.match(key).groups()  # type: ignore[union-attr]
        tensor = state.pop(key)
        q, k, v, mlp = torch.split(tensor, [width, width, width, tensor.shape[0] - 3 * width], dim=0)
        for name, part in (("attn.to_q", q), ("attn.to_k", k), ("attn.to_v", v), ("proj_mlp", mlp)):
            own[f"single_transformer_blocks.{i}.{name}.{leaf}"] = part
        stand_in_rows = 7 * _DIFFUSERS_WIDTH
        state[key] = torch.empty((stand_in_rows, *tensor.shape[1:]), device="meta")
    converted = convert(state)
    for key in own:
        converted.pop(key, None)
    return {**{k: v for k, v in converted.items() if v.device.type != "meta"}, **own}


def _new_model(layout: FluxLayout) -> torch.nn.Module:
    from diffusers import FluxTransformer2DModel

    model: Any = FluxTransformer2DModel(**model_config(layout))
    if layout.guidance:
        _allow_no_guidance(model)
    module: torch.nn.Module = model
    return module


def _allow_no_guidance(model: Any) -> None:
    """ComfyUI lets a guidance-distilled model run without guidance (FluxDisableGuidance): the guidance
    embedding is then left out. diffusers' embedder takes guidance always; this subclass takes it or not."""
    from diffusers.models.embeddings import CombinedTimestepGuidanceTextProjEmbeddings

    class OptionalGuidanceEmbedding(CombinedTimestepGuidanceTextProjEmbeddings):  # type: ignore[misc]
        def forward(self, timestep: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
            if len(rest) == 2:
                return super().forward(timestep, *rest)  # type: ignore[no-any-return]
            pooled = rest[0]
            t = self.timestep_embedder(self.time_proj(timestep).to(dtype=pooled.dtype))
            return t + self.text_embedder(pooled)  # type: ignore[no-any-return]

    model.time_text_embed.__class__ = OptionalGuidanceEmbedding


def build_flux(src: TensorSource, layout: FluxLayout, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The diffusers model with the file's weights on `device`: fp8 linears stay fp8 and compute in `dtype`,
    the rest in `dtype`."""
    return load_fp8_aware(src, layout.prefix, lambda: _new_model(layout), lambda s: convert_flux(s, layout.width),
                          device, dtype, "FLUX")


def lora_key_map(src: TensorSource, prefix: str, width: int, converter: Any = None) -> LoraKeyMap:
    """LoRA keys of FLUX (and Chroma, `converter` given): the file's names through convert_flux, and
    single_blocks.N.linear1_qkv for linear1's q, k, v rows."""
    kmap = key_map(src, prefix, lambda s: convert_flux(s, width, converter))
    return dataclasses.replace(kmap, fused=linear1_qkv(kmap.file_shapes, width))



def load_flux(src: TensorSource, layout: FluxLayout, device: torch.device,
              storage: torch.dtype | None = None) -> torch.nn.Module:
    """The model in its compute dtype; an fp8 `storage` (UNETLoader's weight_dtype) rounds bf16/fp16 weights
    to that format first (fp8 files are fp8 already)."""
    return load_diffusion_model(src, "FLUX", lambda: build_flux(src, layout, device, compute_dtype(device)), storage)


def image_ids(h: int, w: int, index: float = 0.0, h_offset: int = 0, w_offset: int = 0,
              device: torch.device | None = None) -> torch.Tensor:
    """Position ids [tokens, 3] of an h×w latent's 2×2 patches: (index, row, column), offsets in latent
    cells rounded to patches as ComfyUI's process_img does; made on `device` (no host copy in a model call,
    which a CUDA graph could not record)."""
    h_len, w_len = (h + PATCH // 2) // PATCH, (w + PATCH // 2) // PATCH
    h_off, w_off = (h_offset + PATCH // 2) // PATCH, (w_offset + PATCH // 2) // PATCH
    ids = torch.zeros(h_len, w_len, 3, device=device)
    ids[..., 0] = index
    ids[..., 1] = torch.arange(h_len, dtype=torch.float32, device=device)[:, None] + h_off
    ids[..., 2] = torch.arange(w_len, dtype=torch.float32, device=device)[None, :] + w_off
    return ids.reshape(-1, 3)


def _patches(x: torch.Tensor) -> torch.Tensor:
    """[N, C, h, w] → [N, tokens, C·4] (circular padding to whole patches, (c, ph, pw) feature order)."""
    x = F.pad(x, (0, (-x.shape[-1]) % PATCH, 0, (-x.shape[-2]) % PATCH), mode="circular")
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // PATCH, PATCH, w // PATCH, PATCH).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, (h // PATCH) * (w // PATCH), c * PATCH**2)


def reference_ids(refs: list[torch.Tensor], h: int, w: int, method: str) -> list[torch.Tensor]:
    """Position ids of each reference latent (Kontext), placed as ComfyUI places them: `offset` (index 1,
    each beside or below the ones before, whichever keeps the canvas squarer), `index` (index 1, 2, …, all
    at the origin) or `uxo` (index 0, diagonally past the image and the references before)."""
    if method not in REF_METHODS:
        raise ModelError(f"unknown reference latent method {method!r} (one of {', '.join(REF_METHODS)})")
    h_len, w_len = (h + PATCH // 2) // PATCH, (w + PATCH // 2) // PATCH
    sizes = [(int(ref.shape[-2]), int(ref.shape[-1])) for ref in refs]
    places = reference_places(sizes, (h_len * PATCH, w_len * PATCH), method)
    return [image_ids(rh, rw, *place) for (rh, rw), place in zip(sizes, places, strict=True)]


def reference_places(sizes: list[tuple[int, int]], image: tuple[int, int], method: str,
                     index_step: float = 1.0) -> list[tuple[float, int, int]]:
    """(index, row offset, column offset) of each reference latent of `sizes` (rows, columns) as ComfyUI's FLUX
    models place them beside an image of extent `image`: `index` (index_step, 2·index_step, …, all at the
    origin), `uxo` (index 0, diagonally past the image and the references before) or anything else as `offset`
    (index 1, each beside or below the ones before, whichever keeps the canvas squarer)."""
    out: list[tuple[float, int, int]] = []
    used_h = used_w = 0
    index = 0.0
    for rh, rw in sizes:
        if method == "index":
            index += index_step
            h_off = w_off = 0
        elif method == "uxo":
            index = 0.0
            h_off, w_off = image[0] + used_h, image[1] + used_w
            used_h += rh
            used_w += rw
        else:
            index = 1.0
            h_off = w_off = 0
            if rh + used_h > rw + used_w:
                w_off = used_w
            else:
                h_off = used_h
            used_h, used_w = max(used_h, rh + h_off), max(used_w, rw + w_off)
        out.append((index, h_off, w_off))
    return out


class FluxCall:
    """The model as the denoiser calls it: (x [N, C, h, w], timestep σ [N], T5 context [N, T, D], y) → the
    velocity, so that x0 = x − σ·out. y is the pooled CLIP-L vector [N, vec] followed, on guidance-distilled
    models, by one guidance column (NaN: guidance disabled). `refs` are Kontext reference latents [1, C, h, w]
    (already scaled into the model's space) whose tokens join the image's and are dropped from the output.
    `style` are USO style tokens [1 or N, S, width] (USOStyleReference) put before the text tokens after the
    model's text projection (`context_embedder`, ComfyUI's `txt_in`), at position ids zero."""

    def __init__(self, model: torch.nn.Module, layout: FluxLayout) -> None:
        self.model = model
        self.layout = layout

    def __call__(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor | None,
                 refs: list[torch.Tensor] | None = None, ref_method: str = "offset",
                 style: torch.Tensor | None = None) -> torch.Tensor:
        pooled, guidance = self.split_y(y, x.shape[0], x.device, x.dtype)
        return self.run(x, t, ctx, pooled, guidance, refs, ref_method, style)

    def static_inputs(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor | None,
                      refs: list[torch.Tensor] | None = None, ref_method: str = "offset",
                      style: torch.Tensor | None = None) -> tuple[torch.Tensor | None, ...] | None:
        """The fast path's fixed-shape inputs (x, t, ctx, pooled, guidance): a disabled guidance is None, a
        bucket of its own; a call with Kontext references or USO style tokens runs eagerly (None)."""
        if refs or style is not None:
            return None
        return (x, t, ctx, *self.split_y(y, x.shape[0], x.device, x.dtype))

    def run(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, pooled: torch.Tensor,
            guidance: torch.Tensor | None, refs: list[torch.Tensor] | None = None,
            ref_method: str = "offset", style: torch.Tensor | None = None) -> torch.Tensor:
        """The model on y split into pooled [N, vec] and guidance [N] (None: left out), guidance as `split_y`
        gives it: already scaled by 1000 and rounded as ComfyUI embeds it."""
        n, _, h, w = x.shape
        dtype = x.dtype
        img = _patches(x)
        ids = image_ids(h, w, device=x.device)
        tokens = img.shape[1]
        if refs:
            for ref, rid in zip(refs, reference_ids(refs, h, w, ref_method), strict=True):
                img = torch.cat([img, _patches(ref.to(x.device, dtype)).expand(n, -1, -1)], dim=1)
                ids = torch.cat([ids, rid.to(x.device)])
        extra = 0 if style is None else style.shape[1]
        txt_ids = torch.zeros(extra + ctx.shape[1], 3, device=x.device)
        t = t.to(x.device).float()
        feed(self.model.get_submodule("time_text_embed"), t * 1000, guidance)
        with _style_tokens_before_text(self.model, style, n):
            out = self.model(hidden_states=img, encoder_hidden_states=ctx.to(dtype), pooled_projections=pooled,
                             timestep=t, img_ids=ids, txt_ids=txt_ids,
                             guidance=None if guidance is None else guidance / 1000, return_dict=False)[0]
        out = out[:, :tokens]
        hp, wp = (h + PATCH - 1) // PATCH, (w + PATCH - 1) // PATCH
        c = out.shape[-1] // PATCH**2
        out = out.reshape(n, hp, wp, c, PATCH, PATCH).permute(0, 3, 1, 4, 2, 5).reshape(n, c, hp * PATCH, wp * PATCH)
        result: torch.Tensor = out[:, :, :h, :w]
        return result

    def split_y(self, y: torch.Tensor | None, n: int, device: torch.device, dtype: torch.dtype,
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(pooled [N, vec], guidance [N] or None) from y; a missing y is a zero pooled vector, as in ComfyUI.
        The guidance is returned as the value the model embeds (`comfy_guidance`), computed here, eagerly: the
        fast path's compiled call would otherwise skip its rounding."""
        vec = self.layout.vec_dim
        if y is None:
            return torch.zeros(n, vec, device=device, dtype=dtype), None
        pooled = y[:, :vec].to(device, dtype)
        if not self.layout.guidance or y.shape[1] == vec or torch.isnan(y[:, vec]).any():
            return pooled, None
        return pooled, comfy_guidance(y[:, vec].to(device), dtype)


@contextlib.contextmanager
def _style_tokens_before_text(model: torch.nn.Module, style: torch.Tensor | None, n: int) -> Iterator[None]:
    """While it is open, the model's text projection answers `style` (batch 1 repeated to n) ‖ its output,
    as ComfyUI's post_input patch does; a hook, removed after the call, under the model's lock (every call of a
    cached model takes it), so no other job's call sees it."""
    if style is None:
        yield
        return

    def prepend(_module: torch.nn.Module, _args: Any, out: torch.Tensor) -> torch.Tensor:
        return torch.cat([style.to(out.device, out.dtype).expand(n, -1, -1), out], dim=1)

    with model_lock(model):
        handle = model.get_submodule("context_embedder").register_forward_hook(prepend)
        try:
            yield
        finally:
            handle.remove()


def recognition(layout: FluxLayout) -> Recognition:
    """What the model cache keeps of the file: the family, the flow prediction and the sizes sampling reads
    (latent channels, T5 width, pooled width as the ADM size)."""
    summary = UNetLayout(in_channels=layout.in_channels, out_channels=layout.out_channels,
                         model_channels=layout.width, level_channels=(), res_blocks=0, depth=(), up_depth=(),
                         mid_depth=0, context_dim=layout.context_dim, linear_proj=True, adm=layout.vec_dim)
    return Recognition(NAME, "flow", False, summary, (), None)


def comfy_guidance(guidance: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """1000·guidance as ComfyUI's FLUX embeds it, in float32: the guidance arrives in the model dtype and is
    scaled there (in bf16, 3.5 becomes 3504), unlike the timestep, which ComfyUI scales in float32."""
    return (guidance.to(dtype) * 1000).float()


def flux_y(pooled: torch.Tensor | None, guidance: float | None, vec_dim: int) -> torch.Tensor:
    """y for one conditioning entry: pooled [1, vec] (zeros if the entry has none) ‖ guidance (NaN when
    FluxDisableGuidance removed it; ComfyUI's default, when no FluxGuidance set one, is 3.5)."""
    p = torch.zeros(1, vec_dim) if pooled is None else torch.as_tensor(pooled).float().reshape(1, -1)
    g = float("nan") if guidance is None else float(guidance)
    return torch.cat([p, torch.tensor([[g]])], dim=1)


DEFAULT_GUIDANCE = 3.5  # what ComfyUI's FLUX model embeds when no FluxGuidance set one


def layout_of(model: torch.nn.Module) -> FluxLayout:
    """The layout a built model was made from (what FluxCall reads of it), from its diffusers config."""
    c: Any = model.config
    width = int(c.num_attention_heads) * int(c.attention_head_dim)
    return FluxLayout(prefix="", width=width, heads=int(c.num_attention_heads), head_dim=int(c.attention_head_dim),
                      depth=int(c.num_layers), depth_single=int(c.num_single_layers),
                      in_channels=int(c.in_channels) // PATCH**2,
                      out_channels=int(c.out_channels or c.in_channels) // PATCH**2,
                      vec_dim=int(c.pooled_projection_dim), context_dim=int(c.joint_attention_dim),
                      guidance=bool(c.guidance_embeds), mlp=4 * width)


def entry_y(vec_dim: int) -> Any:
    """SamplingModel.make_y for FLUX: pooled ‖ the entry's guidance (3.5 when no FluxGuidance set one, NaN
    when FluxDisableGuidance removed it), as ComfyUI's Flux model conditions it."""
    def make(pooled: Any, extras: dict[str, Any]) -> torch.Tensor:
        return flux_y(pooled, extras.get("guidance", DEFAULT_GUIDANCE), vec_dim)
    return make


def entry_inputs(latent_format: LatentFormat) -> Any:
    """SamplingModel.entry_inputs for FLUX: an entry's reference latents (ReferenceLatent) moved into the
    model's latent space, and their placement (FluxKontextMultiReferenceLatentMethod; ComfyUI places any
    method it does not know, index_timestep_zero included, as `offset`)."""
    def inputs(extras: dict[str, Any]) -> dict[str, Any] | None:
        refs = extras.get("reference_latents")
        if not refs:
            return None
        method = extras.get("reference_latents_method") or "offset"
        return {"refs": [latent_format.process_in(torch.as_tensor(r).float()) for r in refs],
                "ref_method": method if method in REF_METHODS else "offset"}
    return inputs


def sampling_model(model: torch.nn.Module, rec: Recognition, device: torch.device) -> SamplingModel:
    """The denoiser's view of a loaded FLUX model with ComfyUI's default model sampling (ModelSamplingFlux at
    shift 1.15, σ as the timestep). Text tokens join the image's in one attention, so contexts of other
    lengths never share a call; y is pooled ‖ guidance."""
    layout = layout_of(model)
    dtype = model_dtype(model, device)
    return SamplingModel(
        unet=FluxCall(model, layout), sampling=FluxModelSampling(), prediction="flow", latent_format=FLUX,
        family=NAME, context_dim=layout.context_dim, adm=layout.vec_dim + 1, device=device, dtype=dtype,
        in_channels=layout.in_channels, joint_context=True, make_y=entry_y(layout.vec_dim),
        entry_inputs=entry_inputs(FLUX),
    )


class FluxFamily:
    """FLUX.1 (dev, schnell, Kontext, Krea) in the family registry: DualCLIPLoader type `flux` (CLIP-L and
    T5-XXL), the all-in-one checkpoint's encoders, FLUX's latents and 16-channel VAE, ModelSamplingFlux. Text
    tokens join the image's in one attention, so calls never batch across jobs; LoRA; the fast path
    (Kontext references run eagerly)."""

    name = NAME
    clip_types: tuple[str, ...] = ("flux",)
    latent_format: LatentFormat = FLUX
    vae_kind: VaeKind = "flux16"
    batches = False
    fast_path = True
    lora = True
    checkpoint_vae_prefix = "vae."  # ComfyUI's FLUX checkpoints keep the VAE under `vae.`

    def recognise(self, src: TensorSource) -> FluxLayout | None:
        return parse_flux(src)

    def build(self, src: TensorSource, layout: FluxLayout, device: torch.device,
              weight_dtype: torch.dtype | None) -> BuiltModel:
        return BuiltModel(recognition(layout), load_flux(src, layout, device, weight_dtype),
                          lora_map=lora_key_map(src, layout.prefix, layout.width))

    def sampling_model(self, module: torch.nn.Module, rec: Recognition, device: torch.device) -> SamplingModel:
        return sampling_model(module, rec, device)

    def static_form(self, module: torch.nn.Module) -> StaticForm:
        call = FluxCall(module, layout_of(module))
        return StaticForm(call.static_inputs, call.run)

    def load_text_encoders(self, clip_type: str, paths: list[Path], device: torch.device) -> dict[str, Any]:
        return load_text_encoder_files(paths, device)

    def load_checkpoint_encoders(self, src: TensorSource, device: torch.device) -> dict[str, Any]:
        return load_checkpoint_encoders(src, device)

    def encode(self, text: str, encoders: dict[str, Any], clip: ModelHandle) -> Conditioning:
        return encode_flux(encoders, text, text, clip.get("stop_at_clip_layer"), clip=clip)

    def model_sampling(self, record: dict[str, Any], sm: SamplingModel) -> SamplingModel:
        # ModelSamplingFlux's resolution-derived shift; ModelSamplingSD3/AuraFlow replace it as in ComfyUI
        if record["kind"] == "flux":
            return dataclasses.replace(sm, sampling=FluxModelSampling(record["shift"]))
        return flow_shift_sampling(record, sm)


FAMILY: DiffusionFamily = FluxFamily()
