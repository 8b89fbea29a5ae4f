"""HiDream I1 (full, dev, fast) and E1 (editing): recognise a diffusion model in ComfyUI's key layout
(`double_stream_blocks.N.block`, `single_stream_blocks.N.block`, `caption_projection.N`, MoE feed-forwards
`ff_i.experts.N` / `ff_i.shared_experts` / `ff_i.gate`), bare or under `model.diffusion_model.`, build diffusers'
HiDreamImageTransformer2DModel from its shapes (same key names), and call it with ComfyUI's conventions.

What shapes cannot tell is fixed as ComfyUI fixes it (model_detection): 128-wide heads (width / 128 heads), RoPE
θ 10 000 over (index, row, column) axes 64:32:32, 2×2 patches, 2 of the routed experts active per token, and
each block's Llama hidden state: block i reads state min(i, 31) (ComfyUI's list 0…31 then 31 for the rest; a
reduced encoder with fewer states gives its last). As ComfyUI's model does: time is σ·1000 (default sampling: flow,
shift 1), odd latents are padded circularly to whole patches, the MoE routes tokens expert by expert (its
training-mode branch, which ComfyUI always takes), the output is negated, and E1's `image_cond`
(InstructPixToPixConditioning's latent) joins the latent along the width and is cropped off the output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from comfymesh.contracts.errors import ModelError, NodeInputError
from comfymesh.contracts.handles import ModelHandle
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
from comfymesh.diffusion.latents.formats import FLUX, LatentFormat
from comfymesh.diffusion.models.flow_lora import key_map
from comfymesh.diffusion.models.recognise import Recognition, UNetLayout
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.sampling.flow_sampling import FlowModelSampling
from comfymesh.diffusion.sampling.ksampler import SamplingModel

NAME = "hidream"
PATCH = 2
HEAD_DIM = 128
AXES = (64, 32, 32)  # RoPE split of a 128-wide head
ACTIVE_EXPERTS = 2
LLAMA_LAST = 31  # the deepest Llama state ComfyUI's llama_layers list names
SHIFT, MULTIPLIER = 1.0, 1000.0  # ComfyUI's HiDream sampling_settings are empty: flow defaults
_MARKERS = ("caption_projection.0.linear.weight", "double_stream_blocks.0.block.attn1.to_q.weight",
            "x_embedder.proj.weight")


@dataclass(frozen=True)
class HiDreamLayout:
    prefix: str
    width: int
    depth: int  # double-stream blocks
    depth_single: int
    in_channels: int
    out_channels: int
    pooled_dim: int  # CLIP-L ‖ CLIP-G pooled (2048)
    t5_dim: int  # T5-XXL's width (4096)
    llama_dim: int  # Llama-3.1's width (4096)
    experts: int  # routed experts per MoE feed-forward (0: plain SwiGLU)

    @property
    def heads(self) -> int:
        return self.width // HEAD_DIM

    def describe(self) -> str:
        return (f"HiDream (width {self.width}, {self.depth}+{self.depth_single} blocks, {self.experts} experts, "
                f"text widths T5 {self.t5_dim} / Llama {self.llama_dim})")


def swiglu_hidden(hidden: int, multiple_of: int = 256) -> int:
    """The SwiGLU inner width HiDream builds for a nominal `hidden`: 2/3 of it, rounded up to a multiple of 256."""
    inner = int(2 * hidden / 3)
    return multiple_of * ((inner + multiple_of - 1) // multiple_of)


def parse_hidream(src: TensorSource) -> HiDreamLayout | None:
    """The HiDream layout of a file, None if it is not one; ModelError if it is one we cannot build."""
    p = model_prefix(src, _MARKERS)
    if p is None:
        return None
    width, patch_in = src.shape(p + "x_embedder.proj.weight")
    depth, single = count_blocks(src.keys, p, "double_stream_blocks"), count_blocks(src.keys, p, "single_stream_blocks")
    ff = p + "double_stream_blocks.0.block.ff_i."
    layout = HiDreamLayout(
        prefix=p, width=width, depth=depth, depth_single=single, in_channels=patch_in // PATCH**2,
        out_channels=src.shape(p + "final_layer.linear.weight")[0] // PATCH**2,
        pooled_dim=src.shape(p + "p_embedder.pooled_embedder.linear_1.weight")[1],
        t5_dim=src.shape(f"{p}caption_projection.{depth + single}.linear.weight")[1],
        llama_dim=src.shape(p + "caption_projection.0.linear.weight")[1],
        experts=count_blocks(src.keys, ff, "experts"),
    )
    expected = swiglu_hidden(4 * width)
    got = src.shape(ff + ("experts.0.w1.weight" if layout.experts else "w1.weight"))[0]
    if width % HEAD_DIM or got != expected or 0 < layout.experts < ACTIVE_EXPERTS:
        raise ModelError(f"{src.path.name}: {layout.describe()} has a shape this stage cannot build (needs a width "
                         f"multiple of {HEAD_DIM}, feed-forward width {expected} (found {got}), at least "
                         f"{ACTIVE_EXPERTS} experts)")
    return layout


def model_config(layout: HiDreamLayout) -> dict[str, Any]:
    return {
        "patch_size": PATCH, "in_channels": layout.in_channels, "out_channels": layout.out_channels,
        "num_layers": layout.depth, "num_single_layers": layout.depth_single, "attention_head_dim": HEAD_DIM,
        "num_attention_heads": layout.heads, "caption_channels": [layout.t5_dim, layout.llama_dim],
        "text_emb_dim": layout.pooled_dim, "num_routed_experts": layout.experts,
        "num_activated_experts": ACTIVE_EXPERTS, "axes_dims_rope": AXES, "max_resolution": (128, 128),
        # HiDreamCall hands the model one Llama state per block, already chosen
        "llama_layers": list(range(layout.depth + layout.depth_single)),
    }


def _comfy_routing(model: torch.nn.Module) -> None:
    """diffusers routes MoE tokens in eval mode with a scatter-add; ComfyUI always takes the other branch (each
    token repeated per active expert, every expert on its rows, a weighted sum): swap that forward in."""
    from diffusers.models.transformers.transformer_hidream_image import MOEFeedForwardSwiGLU

    class ComfyRoutedMoE(MOEFeedForwardSwiGLU):  # type: ignore[misc]
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            dtype = x.dtype
            idx, weight, _ = self.gate(x)
            rows = x.reshape(-1, x.shape[-1]).repeat_interleave(self.num_activated_experts, dim=0)
            chosen = idx.reshape(-1)
            y = torch.empty_like(rows)
            for i, expert in enumerate(self.experts):
                picked = chosen == i
                y[picked] = expert(rows[picked]).to(dtype)
            y = (y.view(*weight.shape, -1) * weight.unsqueeze(-1)).sum(dim=1).view(x.shape).to(dtype)
            return y + self.shared_experts(x)  # type: ignore[no-any-return]

    for module in model.modules():
        if type(module) is MOEFeedForwardSwiGLU:
            module.__class__ = ComfyRoutedMoE


def _identity(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return dict(state)  # diffusers names HiDream's modules as ComfyUI does



def build_hidream(src: TensorSource, layout: HiDreamLayout, device: torch.device,
                  dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import HiDreamImageTransformer2DModel

    model = load_fp8_aware(src, layout.prefix, lambda: HiDreamImageTransformer2DModel(**model_config(layout)),
                           _identity, device, dtype, "HiDream")
    _comfy_routing(model)
    return model


def load_hidream(src: TensorSource, layout: HiDreamLayout, device: torch.device,
                 storage: torch.dtype | None = None) -> torch.nn.Module:
    return load_diffusion_model(src, "HiDream", lambda: build_hidream(src, layout, device, compute_dtype(device)),
                                storage)


def _fit_zeros(t: torch.Tensor, width: int) -> torch.Tensor:
    """A text encoder missing from the CLIP leaves ComfyUI's zeros at the released width; zeros are zeros at the
    model's width too (reduced models differ)."""
    if t.shape[-1] == width or bool(t.any()):
        return t
    return t.new_zeros(*t.shape[:-1], width)


def llama_per_block(ll: torch.Tensor, blocks: int) -> torch.Tensor:
    """[N, states, T, D] → [blocks, N, T, D]: block i's state min(i, 31), the encoder's last when it has fewer."""
    last = min(LLAMA_LAST, ll.shape[1] - 1)
    return ll[:, [min(i, last) for i in range(blocks)]].movedim(1, 0)


class HiDreamCall:
    """The model as the denoiser calls it: (x [N, C, h, w], timestep σ·1000 [N], T5 context [N, T, D], pooled
    y [N, P], llama [1 or N, states, T', D'], image_cond [B, C, h, w] or None) → ComfyUI's output (the velocity,
    x0 = x − σ·out)."""

    def __init__(self, model: torch.nn.Module, layout: HiDreamLayout) -> None:
        self.model = model
        self.layout = layout

    def __call__(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor | None,
                 llama: torch.Tensor | None = None, image_cond: torch.Tensor | None = None) -> torch.Tensor:
        if llama is None:
            raise NodeInputError("the HiDream model needs the conditioning's Llama hidden states: encode the prompt "
                                 "with a HiDream CLIP (QuadrupleCLIPLoader or a CLIP loader of type hidream)")
        n, _, h, w = x.shape
        dtype = x.dtype
        if image_cond is not None:  # E1: the source image's latent beside the canvas
            from comfymesh.diffusion.sampling.concat import resize_to_batch

            x = torch.cat([x, resize_to_batch(image_cond, n).to(x.device, dtype)], dim=-1)
        x = F.pad(x, (0, (-x.shape[-1]) % PATCH, 0, (-x.shape[-2]) % PATCH), mode="circular")
        c, hp, wp = x.shape[1], x.shape[-2] // PATCH, x.shape[-1] // PATCH
        tokens = x.reshape(n, c, hp, PATCH, wp, PATCH).permute(0, 2, 4, 3, 5, 1).reshape(n, hp * wp, c * PATCH**2)
        ids = torch.zeros(hp, wp, 3, device=x.device)
        ids[..., 1] = torch.arange(hp, device=x.device)[:, None]
        ids[..., 2] = torch.arange(wp, device=x.device)[None, :]
        lay = self.layout
        ll = _fit_zeros(llama.to(x.device, dtype), lay.llama_dim)
        ll = llama_per_block(ll.expand(n, *ll.shape[1:]) if ll.shape[0] == 1 else ll, lay.depth + lay.depth_single)
        pooled = torch.zeros(n, lay.pooled_dim, device=x.device, dtype=dtype) if y is None else y.to(dtype)
        # an all-ones token mask changes nothing (keys × 1) and keeps diffusers from padding a non-square latent to
        # its 4096-token maximum, which ComfyUI never does
        out = self.model(
            hidden_states=tokens, timesteps=t.to(x.device).float(), encoder_hidden_states_t5=ctx.to(dtype),
            encoder_hidden_states_llama3=ll, pooled_embeds=pooled, img_ids=ids.reshape(1, -1, 3).expand(n, -1, -1),
            img_sizes=[(hp, wp)] * n, hidden_states_masks=torch.ones(n, hp * wp, device=x.device, dtype=dtype),
            return_dict=False)[0]
        result: torch.Tensor = -out[:, :, :h, :w]
        return result


def layout_of(model: torch.nn.Module) -> HiDreamLayout:
    """The layout a built model was made from (what HiDreamCall reads of it), from its diffusers config."""
    c: Any = model.config
    t5_dim, llama_dim = (int(v) for v in c.caption_channels)
    return HiDreamLayout(prefix="", width=int(c.num_attention_heads) * int(c.attention_head_dim),
                         depth=int(c.num_layers), depth_single=int(c.num_single_layers),
                         in_channels=int(c.in_channels), out_channels=int(c.out_channels or c.in_channels),
                         pooled_dim=int(c.text_emb_dim), t5_dim=t5_dim, llama_dim=llama_dim,
                         experts=int(c.num_routed_experts))


def recognition(layout: HiDreamLayout) -> Recognition:
    summary = UNetLayout(in_channels=layout.in_channels, out_channels=layout.out_channels,
                         model_channels=layout.width, level_channels=(), res_blocks=0, depth=(), up_depth=(),
                         mid_depth=0, context_dim=layout.t5_dim, linear_proj=True, adm=layout.pooled_dim)
    return Recognition(NAME, "flow", False, summary, (), None)


def entry_y(pooled_dim: int) -> Any:
    """SamplingModel.make_y: the entry's pooled output (zeros where it has none)."""
    def make(pooled: Any, extras: dict[str, Any]) -> torch.Tensor:
        if pooled is None:
            return torch.zeros(1, pooled_dim)
        return _fit_zeros(torch.as_tensor(pooled).float().reshape(1, -1), pooled_dim)
    return make


def entry_inputs(extras: dict[str, Any]) -> dict[str, Any] | None:
    """SamplingModel.entry_inputs: the entry's Llama hidden states and E1's source latent (ComfyUI's image_cond
    is process_in of InstructPixToPixConditioning's concat_latent_image)."""
    out: dict[str, Any] = {}
    if extras.get("conditioning_llama3") is not None:
        out["llama"] = torch.as_tensor(extras["conditioning_llama3"]).float()
    if extras.get("concat_latent_image") is not None:
        out["image_cond"] = FLUX.process_in(torch.as_tensor(extras["concat_latent_image"]).float())
    return out or None


def sampling_model(model: torch.nn.Module, rec: Recognition, device: torch.device) -> SamplingModel:
    """The denoiser's view of a loaded HiDream model with ComfyUI's default model sampling (flow, shift 1, time
    σ·1000). Text tokens join the image's in one attention, so contexts of other lengths never share a call."""
    layout = layout_of(model)
    dtype = model_dtype(model, device)
    return SamplingModel(
        unet=HiDreamCall(model, layout), sampling=FlowModelSampling(SHIFT, MULTIPLIER), prediction="flow",
        latent_format=FLUX, family=NAME, context_dim=layout.t5_dim, adm=layout.pooled_dim, device=device,
        dtype=dtype, in_channels=layout.in_channels, joint_context=True, make_y=entry_y(layout.pooled_dim),
        entry_inputs=entry_inputs,
    )


class HiDreamFamily:
    """HiDream I1 / E1 in the family registry: CLIP type `hidream` (QuadrupleCLIPLoader's CLIP-L, CLIP-G, T5-XXL
    and Llama-3.1, or any of them), FLUX's latents and 16-channel VAE, flow sampling (ModelSamplingSD3 as the
    templates set it). Text tokens join the image's in one attention, so calls never batch across jobs; LoRA on
    the diffusion model, no fast path yet."""

    name = NAME
    clip_types: tuple[str, ...] = ("hidream",)
    latent_format: LatentFormat = FLUX
    vae_kind: VaeKind = "flux16"
    batches = False
    fast_path = False
    lora = True

    def recognise(self, src: TensorSource) -> HiDreamLayout | None:
        return parse_hidream(src)

    def build(self, src: TensorSource, layout: HiDreamLayout, device: torch.device,
              weight_dtype: torch.dtype | None) -> BuiltModel:
        return BuiltModel(recognition(layout), load_hidream(src, layout, device, weight_dtype),
                          lora_map=key_map(src, layout.prefix, _identity))

    def sampling_model(self, module: torch.nn.Module, rec: Recognition, device: torch.device) -> SamplingModel:
        return sampling_model(module, rec, device)

    def load_text_encoders(self, clip_type: str, paths: list[Path], device: torch.device) -> dict[str, Any]:
        from comfymesh.diffusion.text.hidream_text import load_encoders

        return load_encoders(paths, device)

    def encode(self, text: str, encoders: dict[str, Any], clip: ModelHandle) -> Conditioning:
        from comfymesh.diffusion.text.hidream_text import hidream_conditioning

        return hidream_conditioning(encoders, text, text, text, text, clip.get("stop_at_clip_layer"))

    def model_sampling(self, record: dict[str, Any], sm: SamplingModel) -> SamplingModel:
        return flow_shift_sampling(record, sm)


FAMILY: DiffusionFamily = HiDreamFamily()
