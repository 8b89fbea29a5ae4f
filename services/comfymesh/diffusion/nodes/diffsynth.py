"""ModelPatchLoader and QwenImageDiffsynthControlnet (comfy_extras.nodes_model_patch): Qwen-Image DiffSynth
ControlNet patches (canny, depth, inpaint) added to the image stream after every transformer block.

Values, storable as every node output is:
- MODEL_PATCH: `{"kind": "model_patch", "name": file in models/model_patches, "digest": sha256}`
- in the MODEL handle, `"model_patches"`: the applied patches, earliest first, each `{"kind": "diffsynth",
  "patch": MODEL_PATCH, "vae": VAE handle, "strength", "image_hw": [H, W], "inputs": stored bundle}`. The
  control image, its mask and the image's VAE encoding (with the mask channel) are tensors, which never travel
  as JSON: they go to the artifact store and the handle embeds the bundle's ref (contracts.values.embed_ref),
  which cache hits and retention count.
A sampler calls `bind_model_patches`: the patches run inside the family's model call (`block_patch`), with the
control re-encoded when the sampled latent is not the image's size, as ComfyUI re-encodes it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from comfymesh.artifacts import ArtifactStore
from comfymesh.catalog.schema import Combo, Float, Link, Output, Source
from comfymesh.config import get_settings
from comfymesh.contracts.errors import ModelError, NodeInputError
from comfymesh.contracts.handles import HandleKind, ModelHandle
from comfymesh.contracts.values import embed_ref, embedded_ref
from comfymesh.diffusion.families import flux, qwen_image, zimage
from comfymesh.diffusion.families.loading import compute_dtype
from comfymesh.diffusion.latents import vae_codec
from comfymesh.diffusion.latents.formats import FLUX
from comfymesh.diffusion.models import wan_vae
from comfymesh.diffusion.models.cache import get_model_cache, module_bytes
from comfymesh.diffusion.models.diffsynth_patch import BlockwiseControlNet, apply_after_block, load_diffsynth_patch
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.models.uso_projector import UsoProjector, is_uso_projector, load_uso_projector
from comfymesh.diffusion.models.zimage_fun_control import FunControlNet, FunPatch, is_zimage_fun, load_zimage_fun
from comfymesh.diffusion.nodes.failures import node
from comfymesh.diffusion.nodes.handles import expect_handle
from comfymesh.diffusion.nodes.latent import _upscale
from comfymesh.diffusion.nodes.model_files import resolve_file
from comfymesh.diffusion.nodes.registry import nodes
from comfymesh.diffusion.nodes.uso_style import KIND as USO
from comfymesh.diffusion.nodes.uso_style import styled_call
from comfymesh.diffusion.nodes.vae import vae_of
from comfymesh.diffusion.sampling.ksampler import SamplingModel
from comfymesh.stage.node import NodeContext

MODULE = "comfy_extras.nodes_model_patch"
PATCHES = "model_patches"
SPATIAL = 8  # the Wan VAE's spatial compression (and the FLUX VAE's)
FLUX_CHANNELS = 16  # a control-only Z-Image Fun union takes the FLUX VAE's latent as it is


@functools.lru_cache(maxsize=4)
def _store_at(url: str) -> ArtifactStore:
    return ArtifactStore(url)


def patch_store() -> ArtifactStore:
    """The artifact store the stage exports to (the same settings), where patch inputs are kept."""
    return _store_at(get_settings().artifacts)


def _patch_net(ctx: NodeContext, value: dict[str, Any]) -> BlockwiseControlNet | FunControlNet | UsoProjector:
    """The resident patch module of a MODEL_PATCH value, in the model cache's budget."""
    if not isinstance(value, dict) or value.get("kind") != "model_patch":
        raise NodeInputError(f"expected a MODEL_PATCH input, got {type(value).__name__}", node_id=ctx.node_id)
    cache = get_model_cache()
    path = resolve_file(ctx, "model_patches", value["name"])
    digest = cache.digest(path)
    if digest != value["digest"]:
        raise ModelError(f"model patch {value['name']} changed on disk since it was loaded; run the loader again",
                         node_id=ctx.node_id)

    def load() -> tuple[Any, int, dict[str, Any]]:
        device = cache.placement.device
        net: nn.Module
        src = TensorSource(path)
        if is_zimage_fun(src):  # Z-Image Fun ControlNets compute in Z-Image's dtype
            net = load_zimage_fun(path, device, compute_dtype(device))
        elif is_uso_projector(src):  # USOStyleReference's (FLUX.1 USO)
            net = load_uso_projector(path, device)
        else:
            net = load_diffsynth_patch(path, device)
        return net, module_bytes(net), {"name": path.name, "digest": digest, "kind": "model_patch"}

    net: BlockwiseControlNet | FunControlNet | UsoProjector = cache._get_or_load(f"model_patch:{digest}", load)
    return net


@nodes.define("ModelPatchLoader", category="advanced/loaders", python_module=MODULE,
    inputs=[Combo("name", Source("models/model_patches"))],
    outputs=[Output("MODEL_PATCH")],
    experimental=True,
)
@node
def model_patch_loader(ctx: NodeContext, name: str) -> tuple[dict[str, Any]]:
    value = {"kind": "model_patch", "name": name,
             "digest": get_model_cache().digest(resolve_file(ctx, "model_patches", name))}
    _patch_net(ctx, value)  # load now: a wrong file fails at its loader
    return (value,)


def control_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """The node's MASK as ComfyUI's patch keeps it: [B, 1, 1, H, W], inverted (1 where the image is kept)."""
    if mask is None:
        return None
    m = mask.float()
    m = m[None] if m.ndim == 2 else m
    return 1.0 - m[:, None, None]


def encode_control(vae: Any, image: torch.Tensor, mask: torch.Tensor | None,
                   additional_in_dim: int) -> torch.Tensor:
    """ComfyUI's encode_latent_cond: the VAE latent of the control image [1, 16, 1, h, w], with the inpaint
    patch's mask channel(s) after it (the kept-area mask bilinearly resized to the latent, or ones)."""
    latent = wan_vae.encode(vae, image)
    if latent.shape[2] != 1:
        raise NodeInputError(f"a DiffSynth control image must be one image, got a batch of {image.shape[0]}")
    if additional_in_dim <= 0:
        return latent
    if mask is None:
        extra = torch.ones_like(latent)[:, :additional_in_dim // 4]
    else:
        m = mask.mean(dim=1, keepdim=True)  # [B, 1, 1, H, W]
        flat = F.interpolate(m.reshape(-1, 1, *m.shape[-2:]), size=latent.shape[-2:], mode="bilinear")
        extra = flat.reshape(m.shape[0], 1, 1, *latent.shape[-2:])
    return torch.cat([latent, extra.to(latent.dtype)], dim=1)


@nodes.define("QwenImageDiffsynthControlnet", category="advanced/loaders/qwen", python_module=MODULE,
    inputs=[
        Link("model", "MODEL"),
        Link("model_patch", "MODEL_PATCH"),
        Link("vae", "VAE"),
        Link("image", "IMAGE"),
        Float("strength", 1.0, min=-10.0, max=10.0, step=0.01),
        Link("mask", "MASK", section="optional"),
    ],
    outputs=[Output("MODEL")],
    experimental=True,
)
@node
def qwen_image_diffsynth_controlnet(ctx: NodeContext, model: ModelHandle, model_patch: dict[str, Any],
                                    vae: ModelHandle, image: Any, strength: float,
                                    mask: Any = None) -> tuple[ModelHandle]:
    model = expect_handle(ctx, model, HandleKind.MODEL)
    net = _patch_net(ctx, model_patch)
    if isinstance(net, UsoProjector):
        raise NodeInputError(f"{model_patch['name']} is a USO style projector: it goes to USOStyleReference",
                             node_id=ctx.node_id)
    if isinstance(net, FunControlNet):
        record = _zimage_fun_record(ctx, net, model_patch, vae, image, strength, mask)
        return ({**model, PATCHES: [*model.get(PATCHES, []), record]},)
    module = _wan_vae(ctx, vae)
    pixels = torch.as_tensor(image).float()[..., :3]
    kept = control_mask(None if mask is None else torch.as_tensor(mask))
    latent = encode_control(module, pixels, kept, net.additional_in_dim)
    tensors = {"image": pixels.numpy(), "latent": latent.numpy()}
    if kept is not None:
        tensors["mask"] = kept.numpy()
    ref = patch_store().put_bundle({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                                   {"type": "DIFFSYNTH_INPUTS"}, "latent")
    record = {"kind": "diffsynth", "patch": model_patch, "vae": vae, "strength": float(strength),
              "image_hw": [int(pixels.shape[1]), int(pixels.shape[2])], "inputs": embed_ref(ref)}
    return ({**model, PATCHES: [*model.get(PATCHES, []), record]},)


def _zimage_fun_record(ctx: NodeContext, net: FunControlNet, model_patch: dict[str, Any], vae: ModelHandle,
                       image: Any, strength: float, mask: Any) -> dict[str, Any]:
    """A Z-Image Fun ControlNet's record: the control image's VAE latent in FLUX's form, stored as the
    DiffSynth inputs are (ComfyUI's ZImageControlPatch.encode_latent_cond)."""
    if mask is not None or net.in_dim != FLUX_CHANNELS:
        raise NodeInputError("the inpainting Z-Image Fun union (a mask, or a file taking the inpaint channels) is not "
                             "supported yet: use the control-only union", node_id=ctx.node_id)
    pixels = torch.as_tensor(image).float()[..., :3]
    latent = FLUX.process_in(vae_codec.encode(vae_of(ctx, vae)[0], pixels))
    ref = patch_store().put_bundle({"image": np.ascontiguousarray(pixels.numpy()),
                                    "latent": np.ascontiguousarray(latent.numpy())}, {"type": "DIFFSYNTH_INPUTS"},
                                   "latent")
    return {"kind": "zimage_fun", "patch": model_patch, "vae": vae, "strength": float(strength),
            "image_hw": [int(pixels.shape[1]), int(pixels.shape[2])], "inputs": embed_ref(ref)}


@dataclasses.dataclass
class _FunApplied:
    """One applied Z-Image Fun ControlNet, its control latent made per latent size on first use."""

    net: FunControlNet
    vae: Any
    strength: float
    image: torch.Tensor
    latent: torch.Tensor
    latents: dict[tuple[int, int], torch.Tensor] = dataclasses.field(default_factory=dict)

    def control(self, latent_hw: tuple[int, int]) -> torch.Tensor:
        latent = self.latents.get(latent_hw)
        if latent is None:
            target = (latent_hw[0] * SPATIAL, latent_hw[1] * SPATIAL)
            latent = self.latent
            if tuple(self.image.shape[1:3]) != target:  # ComfyUI re-encodes the image scaled to the latent
                scaled = _upscale(self.image.movedim(-1, 1), target[1], target[0], "area", "center").movedim(1, -1)
                latent = FLUX.process_in(vae_codec.encode(self.vae, scaled))
            self.latents[latent_hw] = latent
        return latent


class FunControlledCall:
    """Z-Image's model call with the handle's Fun ControlNets run inside it (families.zimage's `controls`)."""

    def __init__(self, call: Any, applied: list[_FunApplied]) -> None:
        self.call = call
        self.applied = applied

    def __call__(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor | None = None,
                 **extra: Any) -> torch.Tensor:
        hw = (int(x.shape[-2]), int(x.shape[-1]))
        controls = [FunPatch(a.net, a.control(hw), a.strength) for a in self.applied]  # the VAE may run first
        out: torch.Tensor = self.call(x, t, ctx, y, controls=controls, **extra)
        return out


def _wan_vae(ctx: NodeContext, vae: ModelHandle) -> Any:
    module = vae_of(ctx, vae)[0]
    if not wan_vae.is_wan_vae(module):
        raise NodeInputError("a DiffSynth patch needs Qwen-Image's VAE (qwen_image_vae)", node_id=ctx.node_id)
    return module


@dataclasses.dataclass
class _Applied:
    """One applied patch, its control tokens made per latent size on first use."""

    net: BlockwiseControlNet
    vae: Any
    strength: float
    image: torch.Tensor
    mask: torch.Tensor | None
    latent: torch.Tensor
    tokens: dict[tuple[int, int], torch.Tensor] = dataclasses.field(default_factory=dict)

    def control(self, latent_hw: tuple[int, int]) -> torch.Tensor:
        tokens = self.tokens.get(latent_hw)
        if tokens is None:
            target = (latent_hw[0] * SPATIAL, latent_hw[1] * SPATIAL)
            latent = self.latent
            if tuple(self.image.shape[1:3]) != target:  # ComfyUI re-encodes the image scaled to the latent
                scaled = _upscale(self.image.movedim(-1, 1), target[1], target[0], "area", "center").movedim(1, -1)
                latent = encode_control(self.vae, scaled, self.mask, self.net.additional_in_dim)
            tokens = self.tokens[latent_hw] = self.net.control_tokens(latent.float())
        return tokens


class PatchedModelCall:
    """The family's model call with the handle's patches applied after every block."""

    def __init__(self, call: Any, patches: list[_Applied]) -> None:
        self.call = call
        self.patches = patches

    def __call__(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor | None = None,
                 **extra: Any) -> torch.Tensor:
        hw = (int(x.shape[-2]), int(x.shape[-1]))
        controls = [(p, p.control(hw)) for p in self.patches]  # before the call: the VAE may run

        def block_patch(index: int, hidden: torch.Tensor) -> torch.Tensor:
            for p, control in controls:
                hidden = apply_after_block(p.net, control, p.strength, index, hidden)
            return hidden

        out: torch.Tensor = self.call(x, t, ctx, y, block_patch=block_patch, **extra)
        return out


def bind_model_patches(ctx: NodeContext, model: ModelHandle, sm: SamplingModel) -> SamplingModel:
    """The sampling model with the MODEL handle's DiffSynth / Z-Image Fun patches or USO style references in
    its model call (none: as it is)."""
    records = model.get(PATCHES) or []
    if not records:
        return sm
    uso = [r for r in records if r["kind"] == USO]
    if uso:
        if sm.family != flux.NAME or len(uso) != len(records):
            raise NodeInputError(f"USOStyleReference applies to FLUX.1 models without other model patches, not "
                                 f"{sm.family}", node_id=ctx.node_id)
        return dataclasses.replace(sm, unet=styled_call(ctx, sm.unet, uso))
    fun = [r for r in records if r["kind"] == "zimage_fun"]
    if fun:
        if sm.family != zimage.NAME or len(fun) != len(records):
            raise NodeInputError(f"Z-Image Fun ControlNets apply to Z-Image models, not {sm.family}",
                                 node_id=ctx.node_id)
        return dataclasses.replace(sm, unet=FunControlledCall(sm.unet, [_fun_applied(ctx, r) for r in records]))
    if sm.family != qwen_image.NAME:
        raise NodeInputError(f"QwenImageDiffsynthControlnet patches apply to Qwen-Image models, not {sm.family}",
                             node_id=ctx.node_id)
    applied = []
    for record in records:
        net = _patch_net(ctx, record["patch"])
        if not isinstance(net, BlockwiseControlNet):
            raise NodeInputError(f"{record['patch']['name']} is not a DiffSynth patch", node_id=ctx.node_id)
        tensors = _stored(ctx, record)
        mask = tensors.get("mask")
        applied.append(_Applied(
            net=net, vae=_wan_vae(ctx, record["vae"]), strength=float(record["strength"]),
            image=torch.from_numpy(tensors["image"].copy()), mask=None if mask is None else torch.from_numpy(mask.copy()),
            latent=torch.from_numpy(tensors["latent"].copy())))
    return dataclasses.replace(sm, unet=PatchedModelCall(sm.unet, applied))


def _stored(ctx: NodeContext, record: dict[str, Any]) -> dict[str, Any]:
    ref = embedded_ref(record["inputs"])
    store = patch_store()
    if not store.exists(ref):
        raise ModelError("the control image of a QwenImageDiffsynthControlnet node is no longer stored; run "
                         "the workflow again", node_id=ctx.node_id)
    tensors, _ = store.get_bundle(ref)
    return tensors


def _fun_applied(ctx: NodeContext, record: dict[str, Any]) -> _FunApplied:
    net = _patch_net(ctx, record["patch"])
    if not isinstance(net, FunControlNet):
        raise NodeInputError(f"{record['patch']['name']} is not a Z-Image Fun ControlNet", node_id=ctx.node_id)
    tensors = _stored(ctx, record)
    return _FunApplied(net=net, vae=vae_of(ctx, record["vae"])[0], strength=float(record["strength"]),
                       image=torch.from_numpy(tensors["image"].copy()), latent=torch.from_numpy(tensors["latent"].copy()))
