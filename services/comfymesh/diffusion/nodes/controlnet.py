"""ControlNet nodes of ComfyUI's nodes.py: the loaders and the apply nodes, and the binding of a
conditioning's ControlNets to the sampled model.

Values, storable as every node output is (`comfymesh.artifacts.codec`):
- CONTROL_NET: `{"kind": "control_net", "name": file in models/controlnet, "digest": sha256, "model": the
  MODEL handle a difference file is added to, or None}`
- in a CONDITIONING entry's extras, the chain of applied ControlNets, earliest first: `"control"` is
  `[{"control_net": CONTROL_NET, "strength", "start_percent", "end_percent"}, ...]` and the hint IMAGE of
  link i is `"control_hint.<i>"`; `"control_apply_to_uncond"` as in ComfyUI (ControlNetApply's links
  also guide the negative).
The sampling nodes call `bind_controls`, which turns the chain into a `ControlChain` on the model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from comfymesh.catalog.schema import Combo, Float, Link, Output, Source
from comfymesh.contracts.errors import ModelError, NodeInputError
from comfymesh.contracts.handles import HandleKind, ModelHandle
from comfymesh.diffusion.latents import vae_codec
from comfymesh.diffusion.models.cache import get_model_cache, module_bytes
from comfymesh.diffusion.models.controlnet import ControlChain, ControlLink, is_diff, load_controlnet
from comfymesh.diffusion.models.qwen_controlnet import (
    QwenControlChain,
    QwenControlLink,
    QwenControlNet,
    is_fun_controlnet,
    is_qwen_controlnet,
    load_qwen_controlnet,
)
from comfymesh.diffusion.models.sd3_controlnet import (
    SD35ControlChain,
    SD35ControlNet,
    SD35Link,
    is_sd35_controlnet,
    load_sd35_controlnet,
)
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.nodes.failures import node
from comfymesh.diffusion.nodes.handles import checkpoint_of, expect_handle
from comfymesh.diffusion.nodes.model_files import resolve_file
from comfymesh.diffusion.nodes.registry import nodes
from comfymesh.diffusion.sampling.ksampler import SamplingModel
from comfymesh.stage.node import NodeContext

Conditioning = list[Any]
HINT_KEY = "control_hint.{}"
MASK_KEY = "control_mask.{}"  # ControlNetInpaintingAliMamaApply's mask of link i (nets that take it)
CATEGORY = "conditioning/controlnet"


def _value(ctx: NodeContext, name: str, model: ModelHandle | None) -> dict[str, Any]:
    value = {"kind": "control_net", "name": name, "digest": get_model_cache().digest(resolve_file(ctx, "controlnet", name)),
             "model": model}
    _network(ctx, value)  # load now: a wrong file fails at its loader
    return value


def _network(ctx: NodeContext, value: dict[str, Any]) -> nn.Module | SD35ControlNet | QwenControlNet:
    """The resident ControlNet of a CONTROL_NET value (a ControlNetModel, an SD3.5 or a Qwen-Image ControlNet), in
    the model cache's budget."""
    cache = get_model_cache()
    path = resolve_file(ctx, "controlnet", value["name"])
    digest = cache.digest(path)
    if digest != value["digest"]:
        raise ModelError(f"ControlNet {value['name']} changed on disk since it was loaded; run the loader again",
                         node_id=ctx.node_id)
    key, base = f"controlnet:{digest}", None
    if is_diff(TensorSource(path)):
        if value.get("model") is None:
            raise NodeInputError(f"{value['name']} is a difference ControlNet: load it with DiffControlNetLoader and "
                                 "the model it was made from", node_id=ctx.node_id)
        ckpt = checkpoint_of(ctx, value["model"])
        key, base = f"{key}:diff:{ckpt.digest}", TensorSource(ckpt.path)

    def load() -> tuple[Any, int, dict[str, Any]]:
        info = {"name": path.name, "digest": digest, "kind": "controlnet"}
        if is_sd35_controlnet(TensorSource(path)):
            sd35 = load_sd35_controlnet(path, cache.placement.device, cache.placement.unet_dtype)
            return sd35, module_bytes(sd35.net), info
        if is_fun_controlnet(TensorSource(path)):
            raise ModelError(f"{path.name} is a VideoX-Fun Qwen-Image ControlNet (control_img_in, control_blocks), a "
                             "format ComfyUI 0.8.0's ControlNetLoader does not load", node_id=ctx.node_id)
        if is_qwen_controlnet(TensorSource(path)):
            qwen = load_qwen_controlnet(path, cache.placement.device, cache.placement.unet_dtype)
            return qwen, module_bytes(qwen.net), info
        net = load_controlnet(path, cache.placement, base)
        return net, module_bytes(net), info

    network: nn.Module | SD35ControlNet | QwenControlNet = cache._get_or_load(key, load)
    return network


def _expect_control_net(ctx: NodeContext, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or value.get("kind") != "control_net":
        raise NodeInputError(f"expected a CONTROL_NET input, got {type(value).__name__}", node_id=ctx.node_id)
    return value


@nodes.define("ControlNetLoader", category="loaders", display_name="Load ControlNet Model",
    inputs=[Combo("control_net_name", Source("models/controlnet"))],
    outputs=[Output("CONTROL_NET")],
)
@node
def controlnet_loader(ctx: NodeContext, control_net_name: str) -> tuple[dict[str, Any]]:
    return (_value(ctx, control_net_name, None),)


@nodes.define("DiffControlNetLoader", category="loaders", display_name="Load ControlNet Model (diff)",
    inputs=[Link("model", "MODEL"), Combo("control_net_name", Source("models/controlnet"))],
    outputs=[Output("CONTROL_NET")],
)
@node
def diff_controlnet_loader(ctx: NodeContext, model: ModelHandle, control_net_name: str) -> tuple[dict[str, Any]]:
    return (_value(ctx, control_net_name, expect_handle(ctx, model, HandleKind.MODEL)),)


def _applied(conditioning: Conditioning, control_net: dict[str, Any], image: Any, strength: float,
             start_percent: float, end_percent: float, to_uncond: bool, vae: Any = None,
             mask: Any = None) -> Conditioning:
    """Every entry with the ControlNet appended to its chain (ComfyUI's set_previous_controlnet)."""
    link = {"control_net": control_net, "strength": float(strength), "start_percent": float(start_percent),
            "end_percent": float(end_percent)}
    if vae is not None:  # ControlNets with latent hints (SD3.5) encode the hint with it
        link["vae"] = vae
    out = []
    for item in conditioning:
        extras = dict(item[1]) if len(item) > 1 and item[1] else {}
        chain = [*extras.get("control", []), link]
        extras.update({"control": chain, HINT_KEY.format(len(chain) - 1): image,
                       "control_apply_to_uncond": to_uncond})
        if mask is not None:
            extras[MASK_KEY.format(len(chain) - 1)] = mask
        out.append([item[0], extras])
    return out


@nodes.define("ControlNetApply", category=CATEGORY, display_name="Apply ControlNet (OLD)",
    inputs=[
        Link("conditioning", "CONDITIONING"),
        Link("control_net", "CONTROL_NET"),
        Link("image", "IMAGE"),
        Float("strength", 1.0, min=0.0, max=10.0, step=0.01),
    ],
    outputs=[Output("CONDITIONING")],
    deprecated=True,
)
@node
def controlnet_apply(ctx: NodeContext, conditioning: Conditioning, control_net: Any, image: Any,
                     strength: float) -> tuple[Conditioning]:
    if strength == 0:
        return (conditioning,)
    control_net = _expect_control_net(ctx, control_net)
    return (_applied(conditioning, control_net, image, strength, 0.0, 1.0, to_uncond=True),)


@nodes.define("ControlNetApplyAdvanced", category=CATEGORY, display_name="Apply ControlNet",
    inputs=[
        Link("positive", "CONDITIONING"),
        Link("negative", "CONDITIONING"),
        Link("control_net", "CONTROL_NET"),
        Link("image", "IMAGE"),
        Float("strength", 1.0, min=0.0, max=10.0, step=0.01),
        Float("start_percent", 0.0, min=0.0, max=1.0, step=0.001),
        Float("end_percent", 1.0, min=0.0, max=1.0, step=0.001),
        Link("vae", "VAE", section="optional"),
    ],
    outputs=[Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative")],
)
@node
def controlnet_apply_advanced(ctx: NodeContext, positive: Conditioning, negative: Conditioning, control_net: Any,
                              image: Any, strength: float, start_percent: float, end_percent: float,
                              vae: Any = None) -> tuple[Conditioning, Conditioning]:
    # the VAE only serves ControlNets that take latent hints (SD3.5's, not SD1.x/SDXL ones), as in ComfyUI
    if strength == 0:
        return positive, negative
    control_net = _expect_control_net(ctx, control_net)
    return (_applied(positive, control_net, image, strength, start_percent, end_percent, False, vae),
            _applied(negative, control_net, image, strength, start_percent, end_percent, False, vae))


# --- binding at sampling -------------------------------------------------------------------------------


def _chain_key(extras: dict[str, Any]) -> str:
    """Equal chains (the positive's and negative's of one apply node) share one ControlChain, so their
    entries can share UNet calls as in ComfyUI."""
    digest = hashlib.sha256(json.dumps(extras["control"], sort_keys=True).encode())
    for i in range(len(extras["control"])):
        digest.update(np.ascontiguousarray(np.asarray(torch.as_tensor(extras[HINT_KEY.format(i)]).float())).tobytes())
        if MASK_KEY.format(i) in extras:
            digest.update(np.ascontiguousarray(np.asarray(torch.as_tensor(extras[MASK_KEY.format(i)]).float())).tobytes())
    return digest.hexdigest()


def _bind(ctx: NodeContext, sm: SamplingModel, conditioning: Conditioning,
          chains: dict[str, ControlChain | SD35ControlChain | QwenControlChain]) -> Conditioning:
    out = []
    for item in conditioning:
        extras = dict(item[1]) if len(item) > 1 and item[1] else {}
        if extras.get("control"):
            key = _chain_key(extras)
            if key not in chains:
                chains[key] = _chain(ctx, sm, extras)
            extras["control"] = chains[key]
        out.append([item[0], extras])
    return out


def _chain(ctx: NodeContext, sm: SamplingModel, extras: dict[str, Any],
           ) -> ControlChain | SD35ControlChain | QwenControlChain:
    """The ControlledUNet of an entry's chain: UNet ControlNets on a UNet, SD3.5 ControlNets on an MMDiT, Qwen-Image
    ControlNets on Qwen-Image."""
    specs = extras["control"]
    nets = [_network(ctx, spec["control_net"]) for spec in specs]
    ranges = [(sm.sampling.percent_to_sigma(spec["start_percent"]), sm.sampling.percent_to_sigma(spec["end_percent"]))
              for spec in specs]
    hints = [torch.as_tensor(extras[HINT_KEY.format(i)]) for i in range(len(specs))]
    if all(isinstance(net, QwenControlNet) for net in nets):
        from comfymesh.diffusion.families import qwen_image

        if sm.family != qwen_image.NAME:
            raise NodeInputError("a Qwen-Image ControlNet runs on a Qwen-Image model only", node_id=ctx.node_id)
        mask_of = [extras.get(MASK_KEY.format(i)) for i in range(len(specs))]
        qwen = [QwenControlLink(net, _qwen_hint(ctx, spec, sm, hint, net, mask), float(spec["strength"]), start, end)
                for net, spec, hint, mask, (start, end) in zip(nets, specs, hints, mask_of, ranges, strict=True)
                if isinstance(net, QwenControlNet)]
        return QwenControlChain(qwen, sm.unet)
    if all(isinstance(net, SD35ControlNet) for net in nets):
        if sm.control_transformer is None:
            raise NodeInputError("an SD3.5 ControlNet runs on an SD3 model only", node_id=ctx.node_id)
        sd35 = [SD35Link(net, _hint_encoder(ctx, spec, sm), hint, float(spec["strength"]), start, end)
                for net, spec, hint, (start, end) in zip(nets, specs, hints, ranges, strict=True)
                if isinstance(net, SD35ControlNet)]
        return SD35ControlChain(sd35, sm.control_transformer, sm.unet, sm.device, sm.dtype)
    if sm.residual_unet is None or any(isinstance(net, (SD35ControlNet, QwenControlNet)) for net in nets):
        raise NodeInputError("this model cannot take these ControlNets' residuals", node_id=ctx.node_id)
    links = [ControlLink(net, hint, float(spec["strength"]), start, end)
             for net, spec, hint, (start, end) in zip(nets, specs, hints, ranges, strict=True)
             if isinstance(net, nn.Module)]
    return ControlChain(links, sm.residual_unet, sm.device, sm.dtype)


def _hint_encoder(ctx: NodeContext, spec: dict[str, Any], sm: SamplingModel,
                  ) -> Callable[[torch.Tensor, int, int], torch.Tensor]:
    """Prepared hint pixels [B, C, H, W] → the VAE's latent in the model's latent form (ComfyUI's SD3 format)."""
    if spec.get("vae") is None:
        raise NodeInputError(f"ControlNet {spec['control_net']['name']} needs a VAE: connect one to the Apply "
                             "ControlNet node's vae input", node_id=ctx.node_id)
    from comfymesh.diffusion.nodes.vae import vae_of

    vae = vae_of(ctx, spec["vae"])[0]

    def encode(pixels: torch.Tensor, _h: int, _w: int) -> torch.Tensor:
        return sm.latent_format.process_in(vae_codec.encode(vae, pixels.movedim(1, -1)))

    return encode


def _qwen_hint(ctx: NodeContext, spec: dict[str, Any], sm: SamplingModel, hint: torch.Tensor, net: QwenControlNet,
               mask: Any) -> Callable[[int, int], torch.Tensor]:
    """(latent h, w) → the hint latent of a Qwen-Image ControlNet (ComfyUI's get_control with the Wan 2.1 format):
    the IMAGE scaled to 8× the latent, Wan-VAE-encoded [1, 16, T, h, w], then the inpainting net's mask channel."""
    if spec.get("vae") is None:
        raise NodeInputError(f"ControlNet {spec['control_net']['name']} needs a VAE: connect one to the Apply "
                             "ControlNet node's vae input", node_id=ctx.node_id)
    from comfymesh.diffusion.models import wan_vae
    from comfymesh.diffusion.nodes.latent import _upscale as common_upscale
    from comfymesh.diffusion.nodes.vae import vae_of

    vae = vae_of(ctx, spec["vae"])[0]
    if not wan_vae.is_wan_vae(vae):
        raise NodeInputError("a Qwen-Image ControlNet needs Qwen-Image's VAE (qwen_image_vae)", node_id=ctx.node_id)

    def encode(height: int, width: int) -> torch.Tensor:
        image = torch.as_tensor(hint).float().movedim(-1, 1)
        scaled = common_upscale(image, width * 8, height * 8, "nearest-exact", "center").movedim(1, -1)
        latent = sm.latent_format.process_in(wan_vae.encode(vae, scaled))
        if not net.concat_mask:
            return latent
        if mask is None:
            raise NodeInputError(f"ControlNet {spec['control_net']['name']} is an inpainting ControlNet: apply it "
                                 "with ControlNetInpaintingAliMamaApply", node_id=ctx.node_id)
        kept = torch.as_tensor(mask).float()  # [B, 1, H, W]: 1 where the image is kept
        kept = common_upscale(kept, latent.shape[-1], latent.shape[-2], "nearest-exact", "center").unsqueeze(2)
        kept = kept.repeat(1, 1, latent.shape[2], 1, 1)
        if kept.shape[0] != latent.shape[0]:
            kept = kept.repeat(-(-latent.shape[0] // kept.shape[0]), 1, 1, 1, 1)[:latent.shape[0]]
        return torch.cat([latent, kept.to(latent.dtype)], dim=1)

    return encode


def _to_uncond(positive: Conditioning, negative: Conditioning) -> None:
    """ComfyUI's apply_empty_x_to_equal_area for ControlNetApply: the positive's chains (entries without an
    area) go to the negative's entries without one, in turn, unless a negative entry has a chain already."""
    chains = [e[1]["control"] for e in positive if e[1].get("control_apply_to_uncond") and "area" not in e[1]
              and e[1].get("control") is not None]
    if not chains or any(e[1].get("control") is not None for e in negative if "area" not in e[1]):
        return
    plain = [i for i, e in enumerate(negative) if "area" not in e[1]]
    for n, chain in enumerate(chains):
        if plain:
            i = plain[n % len(plain)]
            negative[i] = [negative[i][0], {**negative[i][1], "control": chain}]


def bind_controls(ctx: NodeContext, sm: SamplingModel, **sides: Conditioning | None) -> dict[str, Conditioning | None]:
    """Each CONDITIONING (by role: positive, negative, …) with its ControlNet chains bound to the model's
    UNet; entries without ControlNets pass unchanged."""
    chains: dict[str, ControlChain | SD35ControlChain | QwenControlChain] = {}
    bound = {role: None if c is None else _bind(ctx, sm, c, chains) for role, c in sides.items()}
    positive, negative = bound.get("positive"), bound.get("negative")
    if positive is not None and negative is not None:
        _to_uncond(positive, negative)
    return bound
