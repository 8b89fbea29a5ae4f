"""MODEL-handle patches: LoraLoaderModelOnly, the model-sampling nodes of comfy_extras.nodes_model_advanced
recorded in the handle under `model_sampling`, and CFGNorm recorded under `post_cfg` (sampling.post_cfg).

Sampling applies the record (`apply_model_sampling`): eps / v_prediction switch an SD1/SD2/SDXL model's
prediction; the other discrete modes and the flow shifts (SD3, AuraFlow, Flux) are refused on them with a message
saying so. A registered family (families.registry) applies the record itself (`DiffusionFamily.model_sampling`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from comfymesh.catalog.schema import MAX_RESOLUTION, Boolean, Combo, Float, Int, Link, Output, Source
from comfymesh.contracts.errors import NodeInputError
from comfymesh.contracts.handles import HandleKind, ModelHandle
from comfymesh.diffusion.families import registry as families
from comfymesh.diffusion.families.registry import UnsupportedSampling
from comfymesh.diffusion.models.cache import get_model_cache
from comfymesh.diffusion.nodes.diffsynth import bind_model_patches
from comfymesh.diffusion.nodes.failures import node
from comfymesh.diffusion.nodes.handles import checkpoint_of, expect_handle
from comfymesh.diffusion.nodes.model_files import resolve_file
from comfymesh.diffusion.nodes.registry import nodes
from comfymesh.diffusion.sampling.ksampler import SamplingModel
from comfymesh.diffusion.sampling.post_cfg import post_cfg_functions
from comfymesh.stage.node import NodeContext

ADVANCED = "comfy_extras.nodes_model_advanced"
DISCRETE_SAMPLINGS = ("eps", "v_prediction", "lcm", "x0", "img_to_img")
# what each discrete mode switches the model's prediction to (the others are refused for now)
PREDICTION_OF = {"eps": "eps", "v_prediction": "v"}


@nodes.define("LoraLoaderModelOnly", category="loaders",
    description="LoRAs are used to modify diffusion and CLIP models, altering the way in which latents are "
                "denoised such as applying styles. Multiple LoRA nodes can be linked together.",
    inputs=[
        Link("model", "MODEL"),
        Combo("lora_name", Source("models/loras")),
        Float("strength_model", 1.0, min=-100.0, max=100.0, step=0.01),
    ],
    outputs=[Output("MODEL")],
    # ComfyUI's class inherits LoraLoader's output tooltips, both of them
    output_tooltips=["The modified diffusion model.", "The modified CLIP model."],
)
@node
def lora_loader_model_only(ctx: NodeContext, model: ModelHandle, lora_name: str,
                           strength_model: float) -> tuple[ModelHandle]:
    model = expect_handle(ctx, model, HandleKind.MODEL)
    path = resolve_file(ctx, "loras", lora_name)
    get_model_cache().check_lora(path, checkpoint_of(ctx, model))
    digest = get_model_cache().digest(path)
    return ({**model, "loras": [*model["loras"], [lora_name, digest, float(strength_model)]]},)


def _patched(ctx: NodeContext, model: Any, **record: Any) -> tuple[ModelHandle]:
    model = expect_handle(ctx, model, HandleKind.MODEL)
    return ({**model, "model_sampling": record},)


@nodes.define("ModelSamplingDiscrete", category="advanced/model", python_module=ADVANCED,
    inputs=[
        Link("model", "MODEL"),
        Combo("sampling", list(DISCRETE_SAMPLINGS)),
        Boolean("zsnr", False),
    ],
    outputs=[Output("MODEL")],
)
@node
def model_sampling_discrete(ctx: NodeContext, model: ModelHandle, sampling: str, zsnr: bool) -> tuple[ModelHandle]:
    return _patched(ctx, model, kind="discrete", sampling=sampling, zsnr=bool(zsnr))


@nodes.define("ModelSamplingSD3", category="advanced/model", python_module=ADVANCED,
    inputs=[Link("model", "MODEL"), Float("shift", 3.0, min=0.0, max=100.0, step=0.01)],
    outputs=[Output("MODEL")],
)
@node
def model_sampling_sd3(ctx: NodeContext, model: ModelHandle, shift: float) -> tuple[ModelHandle]:
    return _patched(ctx, model, kind="flow", shift=float(shift), multiplier=1000.0)


@nodes.define("ModelSamplingAuraFlow", category="advanced/model", python_module=ADVANCED,
    inputs=[Link("model", "MODEL"), Float("shift", 1.73, min=0.0, max=100.0, step=0.01)],
    outputs=[Output("MODEL")],
)
@node
def model_sampling_aura_flow(ctx: NodeContext, model: ModelHandle, shift: float) -> tuple[ModelHandle]:
    return _patched(ctx, model, kind="flow", shift=float(shift), multiplier=1.0)


def flux_shift(max_shift: float, base_shift: float, width: int, height: int) -> float:
    """The shift ModelSamplingFlux derives: linear in the image's token count (2×2 patches of the 8× latent),
    base_shift at 256 tokens and max_shift at 4096."""
    slope = (max_shift - base_shift) / (4096 - 256)
    return width * height / (8 * 8 * 2 * 2) * slope + base_shift - slope * 256


@nodes.define("ModelSamplingFlux", category="advanced/model", python_module=ADVANCED,
    inputs=[
        Link("model", "MODEL"),
        Float("max_shift", 1.15, min=0.0, max=100.0, step=0.01),
        Float("base_shift", 0.5, min=0.0, max=100.0, step=0.01),
        Int("width", 1024, min=16, max=MAX_RESOLUTION, step=8),
        Int("height", 1024, min=16, max=MAX_RESOLUTION, step=8),
    ],
    outputs=[Output("MODEL")],
)
@node
def model_sampling_flux(ctx: NodeContext, model: ModelHandle, max_shift: float, base_shift: float, width: int,
                        height: int) -> tuple[ModelHandle]:
    return _patched(ctx, model, kind="flux", shift=flux_shift(max_shift, base_shift, width, height))


@nodes.define("CFGNorm", category="advanced/guidance", display_name=None, python_module="comfy_extras.nodes_cfg",
    inputs=[Link("model", "MODEL", {}), Float("strength", 1.0, min=0.0, max=100.0, step=0.01)],
    outputs=[Output("MODEL", "patched_model")], deprecated=False, experimental=True, api_node=False,
    output_matchtypes=None, output_tooltips=[None],
)
@node
def cfg_norm(ctx: NodeContext, model: ModelHandle, strength: float) -> tuple[ModelHandle]:
    model = expect_handle(ctx, model, HandleKind.MODEL)
    return ({**model, "post_cfg": [*model.get("post_cfg", []), ["cfg_norm", float(strength)]]},)


def apply_model_sampling(ctx: NodeContext, model: ModelHandle, sm: SamplingModel) -> SamplingModel:
    """The sampling model as the handle's `model_sampling` record (and DifferentialDiffusion's
    `differential_diffusion` strength, CFGNorm's `post_cfg`) asks, or a NodeInputError saying why not."""
    if model.get("differential_diffusion") is not None:
        sm = dataclasses.replace(sm, mask_strength=float(model["differential_diffusion"]))
    if model.get("post_cfg"):
        sm = dataclasses.replace(sm, post_cfg=post_cfg_functions(model["post_cfg"]))
    sm = bind_model_patches(ctx, model, sm)  # QwenImageDiffsynthControlnet's
    record = model.get("model_sampling")
    if not record:
        return sm
    family = families.get(sm.family)
    if family is not None:
        try:
            return family.model_sampling(record, sm)
        except UnsupportedSampling as exc:
            raise NodeInputError(str(exc), node_id=ctx.node_id) from exc
    if record["kind"] == "discrete" and not record["zsnr"] and record["sampling"] in PREDICTION_OF:
        return dataclasses.replace(sm, prediction=PREDICTION_OF[record["sampling"]])
    if record["kind"] == "discrete":
        what = "zsnr" if record["zsnr"] else f"sampling {record['sampling']!r}"
        raise NodeInputError(f"ModelSamplingDiscrete {what} is not supported yet: use eps or v_prediction "
                             "without zsnr", node_id=ctx.node_id)
    raise NodeInputError(f"a flow model-sampling shift (ModelSampling{'Flux' if record['kind'] == 'flux' else 'SD3/AuraFlow'})"
                         f" cannot apply to the {sm.family} model, which is not a flow model: remove that node "
                         "or load a flow model", node_id=ctx.node_id)
