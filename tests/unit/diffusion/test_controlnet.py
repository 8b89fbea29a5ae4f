"""ControlNet: files in LDM and diffusers naming (and difference files) load into the same model, a wrong file
is refused clearly, and on a tiny SD1.5 the strength, the percent range and reruns behave as in ComfyUI
(CPU, tiny random-weight files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from comfymesh.contracts.errors import ModelError, NodeInputError
from comfymesh.diffusion.models.cache import ModelCache
from comfymesh.diffusion.models.controlnet import ControlChain, ControlLink, load_controlnet
from comfymesh.diffusion.models.convert import Placement
from comfymesh.diffusion.models.tiny_controlnet import make_tiny_controlnet
from comfymesh.diffusion.nodes import nodes
from comfymesh.diffusion.nodes.controlnet import bind_controls
from comfymesh.diffusion.sampling.model_sampling import ModelSampling
from comfymesh.stage.node import NodeContext

GOLDEN = Path(__file__).parents[2] / "golden" / "controlnet_object_info.json"


@pytest.fixture(scope="module")
def controlnets(tiny_home: Path) -> Path:
    folder = tiny_home / "models" / "controlnet"
    ckpts = tiny_home / "models" / "checkpoints"
    for family in ("sd15", "sdxl"):
        make_tiny_controlnet(folder / f"{family}_ldm.safetensors", family, seed=3)
        make_tiny_controlnet(folder / f"{family}_diffusers.safetensors", family, seed=3, naming="diffusers")
    make_tiny_controlnet(folder / "sd15_diff.safetensors", "sd15", seed=3,
                         difference_of=ckpts / "sd15.safetensors")
    return folder


def run(ctx: NodeContext, name: str, **inputs: Any) -> Any:
    return nodes.impls[name](ctx, **inputs)


def test_object_info_equals_comfyui_080() -> None:
    golden = json.loads(GOLDEN.read_text())
    golden.pop("_about")
    assert {name: nodes.schemas[name].object_info() for name in golden} == golden


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_ldm_and_diffusers_named_files_load_the_same_weights(controlnets: Path, family: str) -> None:
    ldm = load_controlnet(controlnets / f"{family}_ldm.safetensors", Placement()).state_dict()
    diffusers = load_controlnet(controlnets / f"{family}_diffusers.safetensors", Placement()).state_dict()
    assert ldm.keys() == diffusers.keys()
    assert all(torch.equal(ldm[k], diffusers[k]) for k in ldm)
    if family == "sdxl":
        assert "class_embedding.linear_1.weight" in ldm  # the ADM projection came along


def test_a_file_that_is_no_controlnet_is_refused(node_ctx: NodeContext, tiny_home: Path, controlnets: Path) -> None:
    (controlnets / "ckpt.safetensors").write_bytes((tiny_home / "models" / "checkpoints" / "sd15.safetensors")
                                                  .read_bytes())
    with pytest.raises(ModelError, match=r"ckpt\.safetensors is not a ControlNet.*model\.diffusion_model"):
        run(node_ctx, "ControlNetLoader", control_net_name="ckpt.safetensors")
    with pytest.raises(NodeInputError, match="not found in models/controlnet"):
        run(node_ctx, "ControlNetLoader", control_net_name="nope.safetensors")


def test_a_difference_file_needs_the_diff_loader_and_adds_the_model(node_ctx: NodeContext, controlnets: Path,
                                                                    model_cache: ModelCache) -> None:
    with pytest.raises(NodeInputError, match="DiffControlNetLoader"):
        run(node_ctx, "ControlNetLoader", control_net_name="sd15_diff.safetensors")
    model, _, _ = run(node_ctx, "CheckpointLoaderSimple", ckpt_name="sd15.safetensors")
    (value,) = run(node_ctx, "DiffControlNetLoader", model=model, control_net_name="sd15_diff.safetensors")
    assert value["model"] == model
    from comfymesh.diffusion.nodes.controlnet import _network

    diff = _network(node_ctx, value).state_dict()
    plain = load_controlnet(controlnets / "sd15_ldm.safetensors", Placement()).state_dict()
    # delta + base = the weights, up to the fp16 rounding of the stored delta
    assert all(torch.allclose(diff[k], plain[k], atol=2e-3) for k in plain)


def _sample(ctx: NodeContext, family: str = "sd15", control: dict[str, Any] | None = None, seed: int = 5) -> torch.Tensor:
    model, clip, _ = run(ctx, "CheckpointLoaderSimple", ckpt_name=f"{family}.safetensors")
    (pos,) = run(ctx, "CLIPTextEncode", text="a house", clip=clip)
    (neg,) = run(ctx, "CLIPTextEncode", text="blurry", clip=clip)
    if control is not None:
        (net,) = run(ctx, "ControlNetLoader", control_net_name=f"{family}_ldm.safetensors")
        hint = torch.linspace(0, 1, 40 * 24 * 3).reshape(1, 40, 24, 3)  # another aspect: centre-cropped
        pos, neg = run(ctx, "ControlNetApplyAdvanced", positive=pos, negative=neg, control_net=net, image=hint,
                       **{"strength": 1.0, "start_percent": 0.0, "end_percent": 1.0, **control})
    (latent,) = run(ctx, "EmptyLatentImage", width=32, height=32, batch_size=1)
    (out,) = run(ctx, "KSampler", model=model, seed=seed, steps=2, cfg=5.0, sampler_name="euler", scheduler="normal",
                 positive=pos, negative=neg, latent_image=latent, denoise=1.0)
    return torch.as_tensor(out["samples"])


def test_strength_percent_range_and_reruns_on_a_tiny_sd15(node_ctx: NodeContext, controlnets: Path) -> None:
    plain = _sample(node_ctx)
    assert torch.equal(_sample(node_ctx, control={"strength": 0.0}), plain)
    full = _sample(node_ctx, control={"strength": 1.0})
    assert not torch.allclose(full, plain, atol=1e-4)
    assert torch.equal(_sample(node_ctx, control={"strength": 1.0}), full)  # bit-identical rerun
    stronger = _sample(node_ctx, control={"strength": 2.0})
    assert not torch.allclose(stronger, full, atol=1e-4)
    # an empty range (σ(0.5) > σ ≥ σ(0.5) holds for no step) is no control at all
    assert torch.equal(_sample(node_ctx, control={"start_percent": 0.5, "end_percent": 0.5}), plain)
    # the first step only (2 steps of the normal schedule: σ_0 = σ_max, σ_1 < σ(0.5))
    first = _sample(node_ctx, control={"end_percent": 0.5})
    assert not torch.allclose(first, plain, atol=1e-4) and not torch.allclose(first, full, atol=1e-4)


def test_an_sdxl_controlnet_takes_the_adm_vector(node_ctx: NodeContext, controlnets: Path) -> None:
    plain = _sample(node_ctx, "sdxl")
    controlled = _sample(node_ctx, "sdxl", {"strength": 1.0})
    assert controlled.shape == plain.shape and not torch.allclose(controlled, plain, atol=1e-4)


def test_the_old_apply_node_also_guides_the_negative(node_ctx: NodeContext, controlnets: Path,
                                                    model_cache: ModelCache) -> None:
    model, clip, _ = run(node_ctx, "CheckpointLoaderSimple", ckpt_name="sd15.safetensors")
    (pos,) = run(node_ctx, "CLIPTextEncode", text="a", clip=clip)
    (neg,) = run(node_ctx, "CLIPTextEncode", text="b", clip=clip)
    (net,) = run(node_ctx, "ControlNetLoader", control_net_name="sd15_ldm.safetensors")
    (pos,) = run(node_ctx, "ControlNetApply", conditioning=pos, control_net=net, image=torch.rand(1, 32, 32, 3),
                 strength=0.8)
    from comfymesh.diffusion.nodes.handles import checkpoint_of

    sm = model_cache.sampling_model(checkpoint_of(node_ctx, model))
    bound = bind_controls(node_ctx, sm, positive=pos, negative=neg)
    chain = bound["positive"][0][1]["control"]
    assert isinstance(chain, ControlChain) and bound["negative"][0][1]["control"] is chain
    assert chain.links[0].strength == 0.8


def test_a_chain_runs_only_inside_its_sigma_range_and_sums_its_links() -> None:
    ms = ModelSampling()
    calls: list[list[torch.Tensor]] = []

    class Net(torch.nn.Module):
        config = type("C", (), {"in_channels": 4})

        def forward(self, x: torch.Tensor, t: torch.Tensor, **kw: Any) -> tuple[list[torch.Tensor], torch.Tensor]:
            s = kw["conditioning_scale"]
            return [torch.full((1,), s)], torch.full((1,), 10 * s)

    def unet(x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, y: Any, down: list[torch.Tensor],
             mid: torch.Tensor) -> torch.Tensor:
        calls.append([*down, mid])
        return x

    hint = torch.zeros(1, 16, 16, 3)
    links = [ControlLink(Net(), hint, 0.5, ms.percent_to_sigma(0.0), ms.percent_to_sigma(1.0)),
             ControlLink(Net(), hint, 2.0, ms.percent_to_sigma(0.5), ms.percent_to_sigma(1.0))]
    chain = ControlChain(links, unet, torch.device("cpu"), torch.float32)
    x, t, ctx = torch.zeros(2, 4, 2, 2), torch.zeros(2), torch.zeros(2, 77, 4)
    chain(x, t, ctx, None, torch.tensor(ms.percent_to_sigma(0.2)), 2)  # the second link not yet
    chain(x, t, ctx, None, torch.tensor(ms.percent_to_sigma(0.7)), 2)
    assert [float(v) for v in calls[0]] == [0.5, 5.0] and [float(v) for v in calls[1]] == [2.5, 25.0]
    late = ControlChain(links[1:], unet, torch.device("cpu"), torch.float32)
    assert late(x, t, ctx, None, torch.tensor(ms.percent_to_sigma(0.2)), 2) is None
