"""Qwen-Image (base, 2512, Edit, Edit 2511 and Layered): recognise a diffusion-model file in ComfyUI's key layout
from its keys and shapes, build diffusers' QwenImageTransformer2DModel from them, and call it as ComfyUI's
`qwen_image` model is called.

The blocks are diffusers' own; the call around them is ComfyUI's: 2×2 patches of a 5-D latent (B, C, T, H, W),
centred (frame, row, column) RoPE positions with reference latents appended under ComfyUI's ref methods, the
text's positions starting past the image's half size, and the timestep embedded in float32. What the shapes
cannot tell is fixed as ComfyUI fixes it: RoPE θ 10 000 with axes 16/56/56 of a 128-wide head (kept in
proportion for reduced heads), time scale 1000, σ as the timestep.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from comfymesh.contracts.errors import ModelError
from comfymesh.contracts.handles import ModelHandle
from comfymesh.diffusion.families.loading import (
    compute_dtype,
    load_diffusion_model,
    load_fp8_aware,
    model_dtype,
    model_prefix,
)
from comfymesh.diffusion.families.registry import (
    BuiltModel,
    Conditioning,
    DiffusionFamily,
    UnsupportedSampling,
    VaeKind,
    flow_shift_sampling,
)
from comfymesh.diffusion.fast.denoiser import StaticForm
from comfymesh.diffusion.latents.formats import LatentFormat
from comfymesh.diffusion.latents.wan21 import WAN21
from comfymesh.diffusion.models.flow_lora import key_map
from comfymesh.diffusion.models.recognise import Recognition, UNetLayout
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.sampling.flux_sampling import FluxModelSampling
from comfymesh.diffusion.sampling.guidance import UNetFn
from comfymesh.diffusion.sampling.ksampler import SamplingModel
from comfymesh.diffusion.text.qwen25_vl import encode_qwen25, load_qwen25_file

NAME = "qwen_image"
SHIFT, MULTIPLIER = 1.15, 1.0  # ComfyUI's Qwen-Image sampling settings (ModelSamplingFlux; σ is the timestep)
PATCH = 2
ROPE_THETA = 10_000.0
_MARKERS = ("txt_norm.weight", "img_in.weight")  # ComfyUI tells Qwen-Image by `txt_norm`
_ZERO_MARKER = "__index_timestep_zero__"  # Edit 2511: reference tokens are modulated at timestep 0
_LAYERED_MARKER = "time_text_embed.addition_t_embedding.weight"  # Layered: an extra learned time term
# after block i, the image stream's hidden states [B, S, D] → new ones (ComfyUI's double_block patches:
# QwenImageDiffsynthControlnet's, models.diffsynth_patch)
BlockPatch = Callable[[int, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class QwenImageLayout:
    prefix: str
    dim: int
    head_dim: int
    n_heads: int
    n_layers: int
    latent_channels: int
    out_channels: int
    text_dim: int
    timestep_zero: bool
    additional_t_cond: bool

    @property
    def axes_dims(self) -> tuple[int, int, int]:
        # Qwen-Image splits its 128-wide heads 16/56/56 over (frame, row, column); reduced heads keep the proportions
        return self.head_dim // 8, self.head_dim * 7 // 16, self.head_dim * 7 // 16

    @property
    def variant(self) -> str:
        return "Layered" if self.additional_t_cond else "Edit 2511" if self.timestep_zero else "base/Edit"

    def describe(self) -> str:
        return (f"Qwen-Image {self.variant} (width {self.dim}, {self.n_layers} blocks, {self.n_heads} heads, text "
                f"width {self.text_dim})")


def parse_qwen_image(src: TensorSource) -> QwenImageLayout | None:
    """The Qwen-Image layout of a file, None if it is not one; ModelError if it is one we cannot build."""
    p = model_prefix(src, _MARKERS)
    if p is None:
        return None
    dim, patched = src.shape(p + "img_in.weight")
    head_dim = src.shape(p + "transformer_blocks.0.attn.norm_q.weight")[0]
    rx = re.compile(re.escape(p) + r"transformer_blocks\.(\d+)\.")
    zero = src.has(p + _ZERO_MARKER)
    layered = src.has(p + _LAYERED_MARKER)
    layout = QwenImageLayout(
        prefix=p, dim=dim, head_dim=head_dim, n_heads=dim // head_dim,
        n_layers=len({m.group(1) for k in src.keys if (m := rx.match(k))}), latent_channels=patched // PATCH**2,
        out_channels=src.shape(p + "proj_out.weight")[0] // PATCH**2, text_dim=src.shape(p + "txt_in.weight")[1],
        timestep_zero=zero, additional_t_cond=layered,
    )
    if dim % head_dim or head_dim % 16 or patched % PATCH**2:
        raise ModelError(f"{src.path.name}: {layout.describe()} has a shape this stage cannot build (head width "
                         f"{head_dim}, image input {patched}; needs a head width that is a multiple of 16 and "
                         "divides the width)")
    return layout


def model_config(layout: QwenImageLayout) -> dict[str, Any]:
    return {
        "patch_size": PATCH, "in_channels": layout.latent_channels * PATCH**2, "out_channels": layout.out_channels,
        "num_layers": layout.n_layers, "attention_head_dim": layout.head_dim,
        "num_attention_heads": layout.n_heads, "joint_attention_dim": layout.text_dim,
        "axes_dims_rope": layout.axes_dims, "zero_cond_t": layout.timestep_zero,
        "use_additional_t_cond": layout.additional_t_cond,
    }


def _new_model(layout: QwenImageLayout) -> torch.nn.Module:
    from diffusers import QwenImageTransformer2DModel

    model: Any = QwenImageTransformer2DModel(**model_config(layout))
    model.pos_embed = torch.nn.Identity()  # the RoPE table is ours (ComfyUI's positions), not diffusers' precomputed one
    module: torch.nn.Module = model
    return module


def _without_marker(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The file's weights by diffusers' names (ComfyUI's are diffusers'): all but the Edit 2511 marker."""
    return {k: v for k, v in state.items() if k != _ZERO_MARKER}


def build_qwen_image(src: TensorSource, layout: QwenImageLayout, device: torch.device,
                     dtype: torch.dtype) -> torch.nn.Module:
    """The diffusers model with the file's weights on `device`: fp8 linears stay fp8 and compute in `dtype`, the
    rest in `dtype`."""
    return load_fp8_aware(src, layout.prefix, lambda: _new_model(layout), _without_marker, device, dtype,
                          "Qwen-Image")


def load_qwen_image(src: TensorSource, layout: QwenImageLayout, device: torch.device,
                    storage: torch.dtype | None = None) -> torch.nn.Module:
    """The model in its compute dtype; an fp8 `storage` (UNETLoader's weight_dtype) rounds its weights first."""
    return load_diffusion_model(src, "Qwen-Image",
                                lambda: build_qwen_image(src, layout, device, compute_dtype(device)), storage)


def recognition(layout: QwenImageLayout) -> Recognition:
    """What the model cache keeps of the file: the family, the flow prediction, the latent channels and the
    text width (no ADM vector)."""
    summary = UNetLayout(in_channels=layout.latent_channels, out_channels=layout.out_channels,
                         model_channels=layout.dim, level_channels=(), res_blocks=0, depth=(), up_depth=(),
                         mid_depth=0, context_dim=layout.text_dim, linear_proj=True, adm=None)
    return Recognition(NAME, "flow", False, summary, (), None)


def patchify(x: torch.Tensor, index: float = 0.0, h_offset: int = 0,
             w_offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A 5-D latent as (tokens [B, T·h·w, 4C], positions [T·h·w, 3]) as ComfyUI's process_img makes them: padded
    circularly to whole patches, channels before the 2×2 patch; positions (frame, row, column) with rows and
    columns centred on the middle patch, a single frame at `index`, several counted 0…T−1."""
    b, c, t, h, w = x.shape
    x = F.pad(x, (0, (-w) % PATCH, 0, (-h) % PATCH, 0, 0), mode="circular")
    hp, wp = x.shape[-2] // PATCH, x.shape[-1] // PATCH
    tokens = x.reshape(b, c, t, hp, PATCH, wp, PATCH).permute(0, 2, 3, 5, 1, 4, 6).reshape(b, t * hp * wp, c * 4)
    h_len, w_len = (h + PATCH // 2) // PATCH, (w + PATCH // 2) // PATCH
    h_off, w_off = (h_offset + PATCH // 2) // PATCH, (w_offset + PATCH // 2) // PATCH
    frames = torch.arange(t, dtype=torch.float64) if t > 1 else torch.full((1,), float(index), dtype=torch.float64)
    rows = torch.arange(h_len, dtype=torch.float64) + h_off - h_len // 2
    cols = torch.arange(w_len, dtype=torch.float64) + w_off - w_len // 2
    ids = torch.stack(torch.meshgrid(frames, rows, cols, indexing="ij"), dim=-1).reshape(-1, 3)
    return tokens, ids


def rope(ids: torch.Tensor, axes_dims: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Complex rotations [S, head_dim/2] of positions [S, 3]: per axis pos·θ^(−2k/d) (float64, as ComfyUI's
    rope), cos and sin rounded to the model's dtype as ComfyUI rounds its table."""
    parts = []
    for axis, dim in enumerate(axes_dims):
        omega = 1.0 / ROPE_THETA ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        parts.append(ids[:, axis:axis + 1].double() * omega[None])
    angles = torch.cat(parts, dim=-1)
    cos, sin = angles.cos().to(dtype).float(), angles.sin().to(dtype).float()
    return torch.complex(cos, sin).to(device)


def _ref_positions(refs: Sequence[torch.Tensor], method: str) -> list[tuple[float, int, int]]:
    """(frame index, row offset, column offset) of each reference latent under ComfyUI's ref methods: `index`
    counts frames 1, 2, … (2511's `index_timestep_zero` too), `negative_index` −1, −2, …, and `offset` (and any
    other name, `uxo` included, as in ComfyUI) puts every reference in frame 1, tiled beside the previous ones
    along the shorter side."""
    out: list[tuple[float, int, int]] = []
    h = w = 0
    for k, ref in enumerate(refs, start=1):
        if method in ("index", "index_timestep_zero"):
            out.append((float(k), 0, 0))
        elif method == "negative_index":
            out.append((float(-k), 0, 0))
        else:
            rh, rw = ref.shape[-2], ref.shape[-1]
            h_off, w_off = (0, w) if rh + h > rw + w else (h, 0)
            h, w = max(h, rh + h_off), max(w, rw + w_off)
            out.append((1.0, h_off, w_off))
    return out


def qwen_image_rope(model: Any, ids: torch.Tensor, latent_hw: Sequence[int], text_len: int,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotations of the image (and reference) positions `ids` and of `text_len` text tokens, which ComfyUI
    places from max(h, w)/2 patches of the h×w latent on, on the model's device."""
    device = next(model.parameters()).device
    dtype = model_dtype(model, device)
    axes = tuple(model.config.axes_dims_rope)
    h_len, w_len = (latent_hw[0] + PATCH // 2) // PATCH, (latent_hw[1] + PATCH // 2) // PATCH
    txt_start = max(w_len // 2, h_len // 2)
    txt_ids = (torch.arange(text_len, dtype=torch.float64) + txt_start)[:, None].expand(-1, 3)
    return rope(ids, axes, dtype, device), rope(txt_ids, axes, dtype, device)


def qwen_image_forward(model: Any, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                       refs: Sequence[torch.Tensor] = (), ref_method: str | None = None,
                       attention_mask: torch.Tensor | None = None,
                       freqs: tuple[torch.Tensor, torch.Tensor] | None = None,
                       block_patch: BlockPatch | None = None) -> torch.Tensor:
    """ComfyUI's Qwen-Image call: x [B, C, T, H, W] (or 4-D, one frame), timestep σ [B], context [B, L, D],
    reference latents already processed into the model's latent space → the velocity, shaped as x.

    `ref_method` None takes the file's default (`index`; 2511 `index_timestep_zero`; Layered `negative_index`).
    `freqs`: the rotations qwen_image_rope gives for these shapes, made beforehand (the fast path's).
    `block_patch`: applied to the image stream after each block (ComfyUI's double_block patches)."""
    four = x.ndim == 4
    x5 = x.unsqueeze(2) if four else x
    device = next(model.parameters()).device
    dtype = model_dtype(model, device)
    method = ref_method or model_default_ref_method(model)
    tokens, ids = patchify(x5)
    n_img = tokens.shape[1]
    parts, all_ids = [tokens], [ids]
    for ref, (index, h_off, w_off) in zip(refs, _ref_positions(refs, method), strict=True):
        ref5 = ref.unsqueeze(2) if ref.ndim == 4 else ref
        ref_tokens, ref_ids = patchify(ref5.to(x5.dtype), index, h_off, w_off)
        parts.append(ref_tokens.expand(x5.shape[0], -1, -1) if ref_tokens.shape[0] == 1 else ref_tokens)
        all_ids.append(ref_ids)
    hidden = torch.cat(parts, dim=1).to(device, dtype)
    if freqs is None:
        freqs = qwen_image_rope(model, torch.cat(all_ids), x5.shape[-2:], context.shape[1])

    t = timestep.to(device).float()
    zero = method == "index_timestep_zero" and len(refs) > 0
    modulate_index = None
    if zero:
        # reference tokens are modulated at timestep 0; the image and the text at t
        t = torch.cat([t, t * 0])
        flags = torch.zeros(hidden.shape[1], dtype=torch.int, device=device)
        flags[n_img:] = 1
        modulate_index = flags[None].expand(x5.shape[0], -1)
    h = model.img_in(hidden)
    txt = model.txt_in(model.txt_norm(context.to(device, dtype)))
    extra = torch.zeros(t.shape[0], dtype=torch.long, device=device) if model.config.use_additional_t_cond else None
    temb = model.time_text_embed(t, h, extra)
    mask = None if attention_mask is None else attention_mask.to(device).bool()
    for i, block in enumerate(_blocks(model, zero)):
        txt, h = block(hidden_states=h, encoder_hidden_states=txt, encoder_hidden_states_mask=mask, temb=temb,
                       image_rotary_emb=freqs, modulate_index=modulate_index)
        if block_patch is not None:
            h = block_patch(i, h)
    if zero:
        temb = temb.chunk(2, dim=0)[0]
    out = model.proj_out(model.norm_out(h, temb))[:, :n_img]
    b, _, frames, hh, ww = x5.shape
    hp, wp = (hh + (-hh) % PATCH) // PATCH, (ww + (-ww) % PATCH) // PATCH
    img = out.reshape(b, frames, hp, wp, -1, PATCH, PATCH).permute(0, 4, 1, 2, 5, 3, 6)
    img = img.reshape(b, -1, frames, hp * PATCH, wp * PATCH)[..., :hh, :ww]
    result: torch.Tensor = img.squeeze(2) if four else img
    return result


def _blocks(model: Any, zero: bool) -> list[Any]:
    """The blocks, each reading its timestep-zero half of the embedding when `zero`: a block built otherwise
    (the method is chosen per call, by the file or FluxKontextMultiReferenceLatentMethod) runs as a shallow copy
    with the flag flipped, which shares its weights and leaves the model untouched for concurrent calls."""
    out = []
    for block in model.transformer_blocks:
        if bool(block.zero_cond_t) != zero:
            block = copy.copy(block)
            block.zero_cond_t = zero
        out.append(block)
    return out


def model_default_ref_method(model: Any) -> str:
    if model.config.use_additional_t_cond:
        return "negative_index"
    return "index_timestep_zero" if model.config.zero_cond_t else "index"


def qwen_image_fn(model: torch.nn.Module) -> UNetFn:
    """The model as the denoiser calls it: (x [N, C, (T,) h, w], timestep σ [N], text features [N, L, D], unused
    y, an entry's reference latents and method as keywords) → ComfyUI's output, the velocity (x0 = x − σ·out)."""

    def run(x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor | None,
            refs: Sequence[torch.Tensor] = (), ref_method: str | None = None,
            block_patch: BlockPatch | None = None) -> torch.Tensor:
        return qwen_image_forward(model, x, t, ctx, refs, ref_method, block_patch=block_patch)

    return run


class QwenImageStaticForm:
    """The fast path's form of the call: the rotations, which depend on shapes alone, made once per latent size
    and text length and passed in (the graph records no host copy); calls with reference latents run eagerly."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self._rope: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def inputs(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor | None,
               refs: Sequence[torch.Tensor] = (), ref_method: str | None = None,
               block_patch: BlockPatch | None = None) -> tuple[torch.Tensor | None, ...] | None:
        if refs or block_patch is not None:  # reference latents and model patches run eagerly
            return None
        x5 = x.unsqueeze(2) if x.ndim == 4 else x
        key = (*x5.shape[2:], ctx.shape[1])
        freqs = self._rope.get(key)
        if freqs is None:
            freqs = self._rope[key] = qwen_image_rope(self.model, patchify(x5[:1])[1], x5.shape[-2:], ctx.shape[1])
        return (x, t, ctx, *freqs)

    def run(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, image_freqs: torch.Tensor,
            text_freqs: torch.Tensor) -> torch.Tensor:
        return qwen_image_forward(self.model, x, t, ctx, freqs=(image_freqs, text_freqs))


def entry_inputs(extras: dict[str, Any]) -> dict[str, Any] | None:
    """SamplingModel.entry_inputs: an entry's reference latents (ReferenceLatent, the edit encoders) moved into
    the model's latent space as ComfyUI's extra_conds moves them, and their method (None: the file's default)."""
    refs = extras.get("reference_latents")
    if not refs:
        return None
    return {"refs": [WAN21.process_in(torch.as_tensor(r).float()) for r in refs],
            "ref_method": extras.get("reference_latents_method")}


def sampling_model(model: torch.nn.Module, rec: Recognition, device: torch.device) -> SamplingModel:
    """The denoiser's view of a loaded Qwen-Image model, with ComfyUI's default sampling (ModelSamplingFlux,
    shift 1.15, σ as time). Text tokens join the image sequence, so contexts of other lengths never share a call."""
    return SamplingModel(
        unet=qwen_image_fn(model), sampling=FluxModelSampling(SHIFT), prediction="flow", latent_format=WAN21,
        family=NAME, context_dim=rec.unet.context_dim, adm=None, device=device, dtype=model_dtype(model, device),
        in_channels=rec.unet.in_channels, joint_context=True, entry_inputs=entry_inputs,
    )


class QwenImage:
    """Qwen-Image in the family registry: CLIPLoader type `qwen_image` with a Qwen2.5-VL file, the Wan 2.1 VAE's
    latents, FLUX-type sampling (shift 1.15; ModelSamplingAuraFlow/SD3 and ModelSamplingFlux records apply).
    Text tokens join the image sequence, so calls never batch across jobs; LoRA; the fast path (reference latents
    run eagerly)."""

    name = NAME
    clip_types: tuple[str, ...] = ("qwen_image",)
    latent_format: LatentFormat = WAN21
    vae_kind: VaeKind = "other"
    batches = False
    fast_path = True
    lora = True

    def recognise(self, src: TensorSource) -> QwenImageLayout | None:
        return parse_qwen_image(src)

    def build(self, src: TensorSource, layout: QwenImageLayout, device: torch.device,
              weight_dtype: torch.dtype | None) -> BuiltModel:
        return BuiltModel(recognition(layout), load_qwen_image(src, layout, device, weight_dtype),
                          lora_map=key_map(src, layout.prefix, skip=(_ZERO_MARKER,)))

    def sampling_model(self, module: torch.nn.Module, rec: Recognition, device: torch.device) -> SamplingModel:
        return sampling_model(module, rec, device)

    def static_form(self, module: torch.nn.Module) -> StaticForm:
        form = QwenImageStaticForm(module)
        return StaticForm(form.inputs, form.run)

    def load_text_encoders(self, clip_type: str, paths: list[Path], device: torch.device) -> dict[str, Any]:
        if len(paths) != 1:
            raise ModelError(f"CLIP type {clip_type!r} takes one text encoder file (qwen_2.5_vl_7b), got {len(paths)}")
        return load_qwen25_file(TensorSource(paths[0]), device)

    def encode(self, text: str, encoders: dict[str, Any], clip: ModelHandle) -> Conditioning:
        # the user turn's last hidden states; ComfyUI applies no prompt weights and passes no pooled output
        return [[encode_qwen25(encoders, text), {}]]

    def model_sampling(self, record: dict[str, Any], sm: SamplingModel) -> SamplingModel:
        if record["kind"] == "flux":  # ComfyUI's Qwen-Image is a FLUX-type model: the node's μ replaces 1.15
            return dataclasses.replace(sm, sampling=FluxModelSampling(record["shift"]))
        try:
            return flow_shift_sampling(record, sm)
        except UnsupportedSampling:
            raise UnsupportedSampling(f"{record.get('sampling', record['kind'])!r} model sampling does not apply to "
                                      "Qwen-Image: use ModelSamplingAuraFlow, ModelSamplingSD3 or "
                                      "ModelSamplingFlux") from None


FAMILY: DiffusionFamily = QwenImage()
