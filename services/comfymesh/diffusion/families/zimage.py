"""Z-Image (Tongyi's NextDiT variant, ComfyUI's `lumina2` image model with Z-Image modulation): recognise a
diffusion-model file in ComfyUI's key layout from its keys and shapes, build diffusers'
ZImageTransformer2DModel from them, and call it with ComfyUI's conventions.

The layout (`layers.N.attention.qkv`, `cap_embedder.1`, `x_pad_token`, ...) is read at any depth and width, so
reduced test models load. What the shapes cannot tell is fixed as ComfyUI fixes it for Z-Image: RoPE θ 256, the
head split 1:1.5:1.5 over (caption, height, width) axes, time scale 1000, 2×2 patches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from comfymesh.contracts.errors import ModelError
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
from comfymesh.diffusion.fast.denoiser import StaticForm, plain_inputs
from comfymesh.diffusion.latents.formats import FLUX, LatentFormat
from comfymesh.diffusion.models.flow_lora import key_map
from comfymesh.diffusion.models.recognise import Recognition, UNetLayout
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.models.zimage_fun_control import FunPatch, fun_controls
from comfymesh.diffusion.sampling.flow_sampling import FlowModelSampling
from comfymesh.diffusion.sampling.guidance import UNetFn
from comfymesh.diffusion.sampling.ksampler import SamplingModel
from comfymesh.diffusion.text.qwen3 import encode_qwen3, load_qwen3_file

NAME = "zimage"
SHIFT, MULTIPLIER = 3.0, 1.0  # ComfyUI's Z-Image sampling settings (the model takes σ itself as its time)
PATCH = 2
ROPE_THETA = 256.0
AXES_LENS = (1536, 512, 512)
NORM_EPS = 1e-5
_MARKER = "layers.0.adaLN_modulation.0.weight"  # Lumina 2 modulates through SiLU first: `adaLN_modulation.1`


@dataclass(frozen=True)
class ZImageLayout:
    prefix: str
    dim: int
    cap_feat_dim: int
    in_channels: int
    n_layers: int
    n_refiner_layers: int
    head_dim: int
    n_heads: int
    n_kv_heads: int
    t_mid: int  # the timestep MLP's hidden width (ComfyUI: min(dim, 1024); diffusers assumes 1024)

    @property
    def axes_dims(self) -> tuple[int, int, int]:
        # Z-Image splits its 128-wide heads 32/48/48; reduced heads keep the proportions
        return self.head_dim // 4, self.head_dim * 3 // 8, self.head_dim * 3 // 8

    def describe(self) -> str:
        return (f"Z-Image (width {self.dim}, {self.n_layers} layers, {self.n_heads} heads, caption width "
                f"{self.cap_feat_dim})")


def parse_zimage(src: TensorSource) -> ZImageLayout | None:
    """The Z-Image layout of a file, None if it is not one; ModelError if it is one we cannot build."""
    prefix = model_prefix(src, ("cap_embedder.1.weight", _MARKER))
    if prefix is None:
        return None
    p = prefix
    dim, cap_dim = src.shape(p + "cap_embedder.1.weight")
    head_dim = src.shape(p + "layers.0.attention.q_norm.weight")[0]
    qkv_rows = src.shape(p + "layers.0.attention.qkv.weight")[0]
    n_heads = dim // head_dim
    n_kv = (qkv_rows // head_dim - n_heads) // 2
    layout = ZImageLayout(
        prefix=p, dim=dim, cap_feat_dim=cap_dim, in_channels=src.shape(p + "x_embedder.weight")[1] // PATCH**2,
        n_layers=count_blocks(src.keys, p, "layers"), n_refiner_layers=count_blocks(src.keys, p, "noise_refiner"),
        head_dim=head_dim, n_heads=n_heads, n_kv_heads=n_kv, t_mid=src.shape(p + "t_embedder.mlp.0.weight")[0],
    )
    if n_kv != n_heads or head_dim % 16 or dim < 256:
        raise ModelError(f"{src.path.name}: {layout.describe()} has a shape this stage cannot build "
                         f"(kv heads {n_kv}, head width {head_dim}; needs kv heads = heads, head width a multiple "
                         "of 16, width ≥ 256)")
    return layout


def model_config(layout: ZImageLayout) -> dict[str, Any]:
    return {
        "all_patch_size": (PATCH,), "all_f_patch_size": (1,), "in_channels": layout.in_channels, "dim": layout.dim,
        "n_layers": layout.n_layers, "n_refiner_layers": layout.n_refiner_layers, "n_heads": layout.n_heads,
        "n_kv_heads": layout.n_kv_heads, "norm_eps": NORM_EPS, "qk_norm": True, "cap_feat_dim": layout.cap_feat_dim,
        "rope_theta": ROPE_THETA, "t_scale": 1000.0, "axes_dims": list(layout.axes_dims),
        "axes_lens": list(AXES_LENS),
    }


def _new_model(layout: ZImageLayout) -> torch.nn.Module:
    from diffusers import ZImageTransformer2DModel
    from diffusers.models.transformers.transformer_z_image import TimestepEmbedder

    model: Any = ZImageTransformer2DModel(**model_config(layout))
    if layout.t_mid != model.t_embedder.mlp[0].out_features:
        model.t_embedder = TimestepEmbedder(min(layout.dim, 256), mid_size=layout.t_mid)

    class ComputeDtypeTimestepEmbedder(TimestepEmbedder):  # type: ignore[misc]
        """diffusers casts the sinusoidal features to the first layer's weight dtype, which in an fp8 file is fp8
        (3 mantissa bits); ComfyUI casts them to the compute dtype, its bias's here (fp8 linears keep theirs in
        it). For other files the two dtypes are one."""

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            features = self.timestep_embedding(t, self.frequency_embedding_size)
            return self.mlp(features.to(self.mlp[0].bias.dtype))  # type: ignore[no-any-return]

    model.t_embedder.__class__ = ComputeDtypeTimestepEmbedder
    module: torch.nn.Module = model
    return module


def build_zimage(src: TensorSource, layout: ZImageLayout, device: torch.device,
                 dtype: torch.dtype) -> torch.nn.Module:
    """The diffusers model with the file's weights on `device`: fp8 linears stay fp8 and compute in `dtype`, the
    rest in `dtype`."""
    from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers as convert

    return load_fp8_aware(src, layout.prefix, lambda: _new_model(layout), convert, device, dtype, "Z-Image")


def zimage_fn(model: torch.nn.Module) -> UNetFn:
    """The model as the denoiser calls it: (x [N, C, h, w], timestep σ·multiplier [N], caption features
    [N, T, D], unused y) → ComfyUI's output, the negated velocity, so that x0 = x − σ·out.

    The transformer counts time the other way (t = 1 − timestep) and pads odd latents circularly to whole
    patches, as ComfyUI's NextDiT does."""

    def run(x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor | None,
            controls: Sequence[FunPatch] = ()) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % PATCH, (-w) % PATCH
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="circular")
        images = list(x.unsqueeze(2).unbind(0))
        captions = list(ctx.unbind(0))
        with fun_controls(model, controls):  # Z-Image Fun ControlNets (QwenImageDiffsynthControlnet's), if any
            out = model(images, 1.0 - t.float(), captions, return_dict=False)[0]
        img: torch.Tensor = torch.stack(list(out)).squeeze(2)[:, :, :h, :w]
        return -img

    return run


def recognition(layout: ZImageLayout) -> Recognition:
    """What the model cache keeps of the file: the family, the flow prediction, and the sizes sampling reads
    (latent channels, caption width; no ADM vector)."""
    summary = UNetLayout(in_channels=layout.in_channels, out_channels=layout.in_channels, model_channels=layout.dim,
                         level_channels=(), res_blocks=0, depth=(), up_depth=(), mid_depth=0,
                         context_dim=layout.cap_feat_dim, linear_proj=True, adm=None)
    return Recognition(NAME, "flow", False, summary, (), None)


def load_zimage(src: TensorSource, layout: ZImageLayout, device: torch.device,
                storage: torch.dtype | None = None) -> torch.nn.Module:
    """The model in its compute dtype; an fp8 `storage` (UNETLoader's weight_dtype) rounds its weights to
    that format first."""
    return load_diffusion_model(src, "Z-Image", lambda: build_zimage(src, layout, device, compute_dtype(device)),
                                storage)


def sampling_model(model: torch.nn.Module, rec: Recognition, device: torch.device) -> SamplingModel:
    """The denoiser's view of a loaded Z-Image model, with ComfyUI's default flow sampling (shift 3, σ as time)."""
    return SamplingModel(
        unet=zimage_fn(model), sampling=FlowModelSampling(SHIFT, MULTIPLIER), prediction="flow", latent_format=FLUX,
        family=NAME, context_dim=rec.unet.context_dim, adm=None, device=device, dtype=model_dtype(model, device),
        in_channels=rec.unet.in_channels, joint_context=not ZImage.batches,
    )


class ZImage:
    """Z-Image in the family registry: CLIPLoader type `lumina2` with a Qwen3 file, FLUX's latents and 16-channel
    VAE, flow sampling. Caption tokens join the image sequence, so calls never batch across jobs; LoRA; the
    fast path."""

    name = NAME
    clip_types: tuple[str, ...] = ("lumina2",)
    latent_format: LatentFormat = FLUX
    vae_kind: VaeKind = "flux16"
    batches = False
    fast_path = True
    lora = True

    def recognise(self, src: TensorSource) -> ZImageLayout | None:
        return parse_zimage(src)

    def build(self, src: TensorSource, layout: ZImageLayout, device: torch.device,
              weight_dtype: torch.dtype | None) -> BuiltModel:
        from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers as convert

        return BuiltModel(recognition(layout), load_zimage(src, layout, device, weight_dtype),
                          lora_map=key_map(src, layout.prefix, convert))

    def sampling_model(self, module: torch.nn.Module, rec: Recognition, device: torch.device) -> SamplingModel:
        return sampling_model(module, rec, device)

    def static_form(self, module: torch.nn.Module) -> StaticForm:
        return StaticForm(plain_inputs, zimage_fn(module))

    def load_text_encoders(self, clip_type: str, paths: list[Path], device: torch.device) -> dict[str, Any]:
        # ComfyUI tells lumina2's encoders apart by the file; this build runs Z-Image's Qwen3
        if len(paths) != 1:
            raise ModelError(f"CLIP type {clip_type!r} takes one text encoder file, got {len(paths)}")
        return {"qwen3": load_qwen3_file(TensorSource(paths[0]), device)}

    def encode(self, text: str, encoders: dict[str, Any], clip: ModelHandle) -> Conditioning:
        # Qwen3 caption features; ComfyUI applies no prompt weights here and passes no pooled output
        return [[encode_qwen3(encoders["qwen3"], text), {}]]

    def model_sampling(self, record: dict[str, Any], sm: SamplingModel) -> SamplingModel:
        return flow_shift_sampling(record, sm)


FAMILY: DiffusionFamily = ZImage()
