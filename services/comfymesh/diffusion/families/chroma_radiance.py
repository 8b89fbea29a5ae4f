"""Chroma Radiance: Chroma in pixel space. The transformer is Chroma's (double/single blocks, the distilled
approximator's modulations, T5 text), but its image tokens are 16×16 RGB patches embedded by a convolution
(`img_in_patch`), it has no final layer, and a NeRF head turns each patch's hidden state into its pixels.

Recognised by keys and shapes: Chroma's markers with `img_in_patch.weight` and `nerf_blocks.0.norm.scale`; the
patch size, NeRF width, depth, MLP ratio and DCT frequencies are read from shapes (ComfyUI 0.8.0 fixes them at the
released 16 / 64 / 4 / 4 / 8, which the shapes give); `nerf_final_layer_conv` is the conv head, else the linear
one; an `__x0__` entry marks the x0-predicting variant. The transformer is diffusers' ChromaTransformer2DModel fed
the patches (the convolution is a linear map of each patch's (channel, row, column) pixels), read before its
final norm; the NeRF head is ours (`models.nerf_head`), as ComfyUI computes it.

The call is ComfyUI's: the image padded circularly to whole patches, (0, row, column) RoPE positions over the
patch grid, σ as the timestep, the head's output cropped; the x0 variant's prediction becomes the velocity
(x − x0) / σ. Sampling as Chroma's (discrete flow, shift 1); the latent is the image in [-1, 1] (the
`pixel_space` VAE), ComfyUI's ChromaRadiance format (3 channels, no scaling).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from comfymesh.contracts.errors import ModelError
from comfymesh.contracts.handles import ModelHandle
from comfymesh.diffusion.families import chroma
from comfymesh.diffusion.families.exact_time import feed
from comfymesh.diffusion.families.flux import convert_flux, image_ids
from comfymesh.diffusion.families.loading import (
    compute_dtype,
    load_diffusion_model,
    load_fp8_aware,
    model_dtype,
    model_prefix,
)
from comfymesh.diffusion.families.registry import BuiltModel, Conditioning, DiffusionFamily, VaeKind
from comfymesh.diffusion.fast.denoiser import StaticForm, plain_inputs
from comfymesh.diffusion.latents.formats import CHROMA_RADIANCE, LatentFormat
from comfymesh.diffusion.models.nerf_head import NerfHead, NerfLayout
from comfymesh.diffusion.models.recognise import Recognition, UNetLayout
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.sampling.flow_sampling import FlowModelSampling
from comfymesh.diffusion.sampling.ksampler import SamplingModel

NAME = "chroma_radiance"
_MARKERS = ("double_blocks.0.img_attn.norm.key_norm.scale", "img_in_patch.weight",
            "distilled_guidance_layer.in_proj.weight", "nerf_blocks.0.norm.scale")
_X0 = "__x0__"


@dataclass(frozen=True)
class RadianceLayout:
    backbone: chroma.ChromaLayout  # in_channels: the patch's pixel count × channels / 4 (Chroma's 2×2 fold)
    channels: int
    patch: int
    nerf: NerfLayout
    x0: bool

    def describe(self) -> str:
        b = self.backbone
        return (f"Chroma Radiance (width {b.width}, {b.depth}+{b.depth_single} blocks, {self.patch}×{self.patch} "
                f"patches, NeRF {self.nerf.width} wide × {self.nerf.depth}{', x0' if self.x0 else ''})")


def parse_radiance(src: TensorSource) -> RadianceLayout | None:
    p = model_prefix(src, _MARKERS)
    if p is None:
        return None
    width, channels, patch, _ = src.shape(p + "img_in_patch.weight")
    backbone, approx_in = chroma.read_backbone(src, p, width, channels * patch * patch // 4)
    layout = RadianceLayout(backbone, channels, patch, NerfLayout.read(src, p, width, channels), src.has(p + _X0))
    if not chroma.buildable(backbone, approx_in) or (channels * patch * patch) % 4:
        raise ModelError(f"{src.path.name}: {layout.describe()} has a shape this stage cannot build (approximator "
                         f"input {approx_in}, head width {backbone.head_dim})")
    return layout


class _BeforeFinalNorm(nn.Module):
    """The transformer's final norm and projection replaced: its image tokens' hidden states come out as they
    are (Chroma Radiance has no final layer; its NeRF head reads them)."""

    def forward(self, hidden: torch.Tensor, *_args: Any) -> torch.Tensor:
        return hidden


class ChromaRadianceModel(nn.Module):
    """The transformer and the NeRF head of one file."""

    def __init__(self, transformer: nn.Module, head: NerfHead, patch: int, x0: bool) -> None:
        super().__init__()
        self.transformer = transformer
        self.head = head
        self.patch = patch
        self.x0 = x0


def build_radiance(src: TensorSource, layout: RadianceLayout, device: torch.device,
                   dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import ChromaTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_chroma_transformer_checkpoint_to_diffusers as convert

    b = layout.backbone
    pixels = layout.channels * layout.patch**2
    head_state: dict[str, torch.Tensor] = {}

    def to_diffusers(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        state = dict(raw)
        for key in [k for k in state if k.startswith("nerf_") or k == _X0]:
            head_state[key] = state.pop(key)
        # the patch convolution as Chroma's patch linear over (channel, row, column) pixels
        state["img_in.weight"] = state.pop("img_in_patch.weight").reshape(b.width, pixels)
        state["img_in.bias"] = state.pop("img_in_patch.bias")
        # no final layer: a stand-in for the converter, dropped with the module after loading
        state["final_layer.linear.weight"] = torch.zeros(pixels, b.width, dtype=state["img_in.weight"].dtype)
        state["final_layer.linear.bias"] = torch.zeros(pixels, dtype=state["img_in.weight"].dtype)
        return convert_flux(state, b.width, convert)

    config = chroma.model_config(b)
    transformer: Any = load_fp8_aware(src, b.prefix, lambda: ChromaTransformer2DModel(**config), to_diffusers,
                                      device, dtype, "Chroma Radiance")
    head = NerfHead(layout.nerf, layout.channels, b.width)
    head.load(head_state, device, dtype)
    return radiance_model(transformer, head, layout.patch, layout.x0, device)


def radiance_model(transformer: Any, head: NerfHead, patch: int, x0: bool, device: torch.device) -> ChromaRadianceModel:
    """The loaded Chroma transformer made Chroma Radiance's backbone (its modulation table; no final norm or
    projection) and joined with its NeRF head, for inference."""
    chroma.add_modulation_table(transformer, device)
    transformer.norm_out = _BeforeFinalNorm()
    transformer.proj_out = nn.Identity()
    return ChromaRadianceModel(transformer, head, patch, x0).eval().requires_grad_(False)


def load_radiance(src: TensorSource, layout: RadianceLayout, device: torch.device,
                  storage: torch.dtype | None = None) -> torch.nn.Module:
    return load_diffusion_model(src, "Chroma Radiance",
                                lambda: build_radiance(src, layout, device, compute_dtype(device)), storage)


def radiance_fn(model: torch.nn.Module) -> Any:
    """The model as the denoiser calls it: (x [N, 3, H, W] pixels in [-1, 1], σ [N], T5 context [N, T, D], y
    ignored) → the velocity (x0 = x − σ·out)."""
    assert isinstance(model, ChromaRadianceModel)
    transformer: Any = model.transformer
    p = model.patch

    def run(x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        h, w = x.shape[-2:]
        img = F.pad(x, (0, (-w) % p, 0, (-h) % p), mode="circular")
        hp, wp = img.shape[-2] // p, img.shape[-1] // p
        tokens = F.unfold(img, kernel_size=p, stride=p).transpose(1, 2)  # [N, patches, (c, row, column)]
        t = t.to(x.device).float()
        feed(transformer.get_submodule("time_text_embed"), t * 1000)
        hidden = transformer(hidden_states=tokens, encoder_hidden_states=ctx.to(x.dtype), timestep=t,
                             img_ids=image_ids(2 * hp, 2 * wp, device=x.device),
                             txt_ids=torch.zeros(ctx.shape[1], 3, device=x.device), return_dict=False)[0]
        out = model.head(img, hidden, p)[:, :, :h, :w]
        if model.x0:  # ComfyUI's x0 variant: its prediction as the velocity
            out = (x - out) / t.to(out.dtype).view(-1, 1, 1, 1)
        result: torch.Tensor = out
        return result

    return run


def recognition(layout: RadianceLayout) -> Recognition:
    b = layout.backbone
    summary = UNetLayout(in_channels=layout.channels, out_channels=layout.channels, model_channels=b.width,
                         level_channels=(), res_blocks=0, depth=(), up_depth=(), mid_depth=0,
                         context_dim=b.context_dim, linear_proj=True, adm=None)
    return Recognition(NAME, "flow", False, summary, (), None)


def sampling_model(model: torch.nn.Module, rec: Recognition, device: torch.device) -> SamplingModel:
    """Chroma's sampling (discrete flow, shift 1, σ as the time) on pixel-space latents."""
    return SamplingModel(
        unet=radiance_fn(model), sampling=FlowModelSampling(chroma.SHIFT, chroma.MULTIPLIER), prediction="flow",
        latent_format=CHROMA_RADIANCE, family=NAME, context_dim=rec.unet.context_dim, adm=None, device=device,
        dtype=model_dtype(model, device), in_channels=rec.unet.in_channels, joint_context=True,
    )


class ChromaRadianceFamily:
    """Chroma Radiance in the family registry: CLIPLoader type `chroma` (one T5-XXL file, as Chroma), the
    pixel-space latent (VAELoader's `pixel_space`), flow sampling with shift 1; the fast path. No LoRA yet."""

    name = NAME
    clip_types: tuple[str, ...] = ()  # CLIPLoader type `chroma` is Chroma's; its T5 conditioning serves both
    latent_format: LatentFormat = CHROMA_RADIANCE
    vae_kind: VaeKind = "other"
    batches = False
    fast_path = True
    lora = False

    def recognise(self, src: TensorSource) -> RadianceLayout | None:
        return parse_radiance(src)

    def build(self, src: TensorSource, layout: RadianceLayout, device: torch.device,
              weight_dtype: torch.dtype | None) -> BuiltModel:
        return BuiltModel(recognition(layout), load_radiance(src, layout, device, weight_dtype))

    def sampling_model(self, module: torch.nn.Module, rec: Recognition, device: torch.device) -> SamplingModel:
        return sampling_model(module, rec, device)

    def static_form(self, module: torch.nn.Module) -> StaticForm:
        return StaticForm(plain_inputs, radiance_fn(module))  # fixed-shape in (x, t, ctx, y) already

    def load_text_encoders(self, clip_type: str, paths: list[Path], device: torch.device) -> dict[str, Any]:
        return chroma.FAMILY.load_text_encoders(clip_type, paths, device)

    def encode(self, text: str, encoders: dict[str, Any], clip: ModelHandle) -> Conditioning:
        return chroma.encode_chroma(encoders, text, clip)

    def model_sampling(self, record: dict[str, Any], sm: SamplingModel) -> SamplingModel:
        return chroma.FAMILY.model_sampling(record, sm)


FAMILY: DiffusionFamily = ChromaRadianceFamily()
