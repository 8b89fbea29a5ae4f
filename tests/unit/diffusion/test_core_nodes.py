"""ComfyUI's core latent, conditioning and model-patch nodes: declarations against ComfyUI 0.8.0's, and
behaviour against ComfyUI's formulas on tiny tensors and tiny models (CPU)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from comfymesh.contracts.errors import NodeInputError
from comfymesh.diffusion.models.cache import get_model_cache
from comfymesh.diffusion.nodes import nodes
from comfymesh.diffusion.nodes.handles import checkpoint_of
from comfymesh.diffusion.nodes.model_patches import apply_model_sampling, flux_shift
from comfymesh.stage.node import NodeContext

GOLDEN = Path(__file__).parents[2] / "golden" / "diffusion_core_object_info.json"


def run(ctx: NodeContext, name: str, **inputs: Any) -> Any:
    return nodes.impls[name](ctx, **inputs)[0]


@pytest.fixture
def ctx(tmp_path: Path) -> NodeContext:
    return NodeContext(job_id="job", node_id="7", class_type="test", home=tmp_path)


def latent(b: int = 1, c: int = 4, h: int = 8, w: int = 8) -> dict[str, Any]:
    return {"samples": torch.arange(b * c * h * w, dtype=torch.float32).reshape(b, c, h, w)}


def test_object_info_equals_comfyui_080() -> None:
    golden = json.loads(GOLDEN.read_text())
    golden.pop("_about")
    assert {name: nodes.schemas[name].object_info() for name in golden} == golden


# --- latents --------------------------------------------------------------------------------------------


def test_latent_composite_pastes_at_the_offset_and_clips_at_the_edge(ctx: NodeContext) -> None:
    to: dict[str, Any] = {"samples": torch.zeros(1, 4, 8, 8), "batch_index": [3]}
    out = run(ctx, "LatentComposite", samples_to=to, samples_from={"samples": torch.ones(1, 4, 4, 4)},
              x=48, y=16, feather=0)
    expected = torch.zeros(1, 4, 8, 8)
    expected[:, :, 2:6, 6:8] = 1
    assert torch.equal(out["samples"], expected)
    assert out["batch_index"] == [3] and torch.equal(to["samples"], torch.zeros(1, 4, 8, 8))


def test_latent_composite_feathers_inner_edges_only(ctx: NodeContext) -> None:
    out = run(ctx, "LatentComposite", samples_to={"samples": torch.zeros(1, 1, 8, 8)},
              samples_from={"samples": torch.ones(1, 1, 4, 4)}, x=16, y=0, feather=16)["samples"][0, 0]
    # feather 2: the left column ramps 1/2, the next 1; the top edge (y == 0) is not feathered
    assert torch.allclose(out[0, 2:6], torch.tensor([0.5, 1.0, 1.0, 0.5]))
    assert torch.allclose(out[3, 2:6], torch.tensor([0.25, 0.5, 0.5, 0.25]))
    assert float(out[:, :2].abs().sum()) == 0.0


def test_latent_blend_mixes_and_resizes_the_second(ctx: NodeContext) -> None:
    a, b = torch.full((1, 4, 8, 8), 2.0), torch.full((1, 4, 8, 8), 4.0)
    out = run(ctx, "LatentBlend", samples1={"samples": a}, samples2={"samples": b}, blend_factor=0.25)
    assert torch.allclose(out["samples"], torch.full((1, 4, 8, 8), 3.5))
    small = run(ctx, "LatentBlend", samples1={"samples": a}, samples2={"samples": torch.full((1, 4, 4, 4), 4.0)},
                blend_factor=0.5)
    assert small["samples"].shape == (1, 4, 8, 8) and torch.allclose(small["samples"], torch.full((1, 4, 8, 8), 3.0))


def test_rotate_is_clockwise_and_flip_follows_the_axis_names(ctx: NodeContext) -> None:
    z = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    assert run(ctx, "LatentRotate", samples={"samples": z}, rotation="90 degrees")["samples"].flatten().tolist() == \
        [3.0, 1.0, 4.0, 2.0]
    assert run(ctx, "LatentRotate", samples={"samples": z}, rotation="none")["samples"].flatten().tolist() == \
        [1.0, 2.0, 3.0, 4.0]
    assert run(ctx, "LatentFlip", samples={"samples": z}, flip_method="x-axis: vertically")["samples"] \
        .flatten().tolist() == [3.0, 4.0, 1.0, 2.0]
    assert run(ctx, "LatentFlip", samples={"samples": z}, flip_method="y-axis: horizontally")["samples"] \
        .flatten().tolist() == [2.0, 1.0, 4.0, 3.0]


def test_latent_crop_keeps_eight_latent_pixels_from_its_origin(ctx: NodeContext) -> None:
    z = latent(h=16, w=16)
    out = run(ctx, "LatentCrop", samples=z, width=64, height=128, x=16, y=8)["samples"]
    assert torch.equal(out, z["samples"][:, :, 1:17, 2:10])
    late = run(ctx, "LatentCrop", samples=z, width=512, height=512, x=1000, y=1000)["samples"]
    assert torch.equal(late, z["samples"][:, :, 8:16, 8:16])


def test_latent_from_batch_and_repeat_keep_seeds_and_masks(ctx: NodeContext) -> None:
    z = latent(b=4, c=1, h=2, w=2)
    z["noise_mask"] = torch.arange(2, dtype=torch.float32).reshape(2, 1, 1, 1).expand(2, 1, 2, 2)
    part = run(ctx, "LatentFromBatch", samples=z, batch_index=2, length=5)
    assert torch.equal(part["samples"], z["samples"][2:4])
    assert part["batch_index"] == [2, 3]
    assert part["noise_mask"][:, 0, 0, 0].tolist() == [0.0, 1.0]  # masks repeat over the batch, then slice
    rep = run(ctx, "RepeatLatentBatch", samples=part, amount=3)
    assert rep["samples"].shape[0] == 6 and torch.equal(rep["samples"][4:], part["samples"])
    assert rep["batch_index"] == [2, 3, 4, 5, 6, 7]
    assert rep["noise_mask"].shape[0] == 6


def test_set_latent_noise_mask_and_empty_sd3_latent(ctx: NodeContext) -> None:
    out = run(ctx, "SetLatentNoiseMask", samples=latent(), mask=torch.ones(16, 24))
    assert out["noise_mask"].shape == (1, 1, 16, 24)
    empty = run(ctx, "EmptySD3LatentImage", width=1024, height=512, batch_size=2)["samples"]
    assert empty.shape == (2, 16, 64, 128) and float(empty.abs().sum()) == 0.0


# --- conditioning ---------------------------------------------------------------------------------------


def cond(value: float, tokens: int, pooled: float | None = None) -> list[Any]:
    extras = {} if pooled is None else {"pooled_output": torch.full((1, 3), pooled)}
    return [[torch.full((1, tokens, 2), value), extras]]


def test_zero_out_average_and_concat(ctx: NodeContext) -> None:
    zero = run(ctx, "ConditioningZeroOut", conditioning=cond(3.0, 2, pooled=5.0))
    assert float(zero[0][0].abs().sum()) == 0.0 and float(zero[0][1]["pooled_output"].abs().sum()) == 0.0
    avg = run(ctx, "ConditioningAverage", conditioning_to=cond(4.0, 3, pooled=1.0),
              conditioning_from=cond(2.0, 2, pooled=3.0), conditioning_to_strength=0.75)
    # from is zero-padded to the to's 3 tokens: 0.75·4 + 0.25·2, then 0.75·4 + 0.25·0
    assert avg[0][0][0, :, 0].tolist() == [3.5, 3.5, 3.0]
    assert torch.allclose(avg[0][1]["pooled_output"], torch.full((1, 3), 1.5))
    cat = run(ctx, "ConditioningConcat", conditioning_to=cond(1.0, 2) + cond(2.0, 1), conditioning_from=cond(9.0, 3))
    assert [c[0].shape[1] for c in cat] == [5, 4] and cat[1][0][0, -1, 0] == 9.0


def test_empty_conditioning_is_refused_with_the_node_id(ctx: NodeContext) -> None:
    with pytest.raises(NodeInputError) as err:
        run(ctx, "ConditioningZeroOut", conditioning=[])
    assert err.value.node_id == "7"


# --- model patches --------------------------------------------------------------------------------------


def test_flux_shift_matches_comfyui_at_its_reference_points() -> None:
    # 256 tokens (256×256 pixels) give base_shift, 4096 tokens (1024×1024) max_shift, linear between
    assert flux_shift(1.15, 0.5, 256, 256) == pytest.approx(0.5)
    assert flux_shift(1.15, 0.5, 1024, 1024) == pytest.approx(1.15)
    assert flux_shift(1.15, 0.5, 512, 512) == pytest.approx(0.5 + 0.65 * 768 / 3840)


def test_model_sampling_patches_are_recorded_and_applied(node_ctx: NodeContext) -> None:
    model = run(node_ctx, "CheckpointLoaderSimple", ckpt_name="sd15.safetensors")
    sm = get_model_cache().sampling_model(checkpoint_of(node_ctx, model))
    assert sm.prediction == "eps"
    v = run(node_ctx, "ModelSamplingDiscrete", model=model, sampling="v_prediction", zsnr=False)
    assert v["model_sampling"] == {"kind": "discrete", "sampling": "v_prediction", "zsnr": False}
    assert "model_sampling" not in model
    assert apply_model_sampling(node_ctx, v, sm).prediction == "v"
    for patched in (run(node_ctx, "ModelSamplingAuraFlow", model=model, shift=3.0),
                    run(node_ctx, "ModelSamplingDiscrete", model=model, sampling="lcm", zsnr=False)):
        with pytest.raises(NodeInputError, match="not"):
            apply_model_sampling(node_ctx, patched, sm)


def test_model_sampling_flow_shift_on_an_sd15_model_fails_at_sampling(node_ctx: NodeContext) -> None:
    model = run(node_ctx, "ModelSamplingSD3",
                model=run(node_ctx, "CheckpointLoaderSimple", ckpt_name="sd15.safetensors"), shift=3.0)
    pos = run(node_ctx, "CLIPTextEncode", text="a", clip=nodes.impls["CheckpointLoaderSimple"](
        node_ctx, ckpt_name="sd15.safetensors")[1])
    with pytest.raises(NodeInputError, match="not a flow model"):
        nodes.impls["KSampler"](node_ctx, model=model, seed=0, steps=1, cfg=1.0, sampler_name="euler",
                                scheduler="normal", positive=pos, negative=pos,
                                latent_image={"samples": torch.zeros(1, 4, 8, 8)})


def test_lora_loader_model_only_patches_the_model_alone(node_ctx: NodeContext) -> None:
    model = run(node_ctx, "CheckpointLoaderSimple", ckpt_name="sd15.safetensors")
    patched = run(node_ctx, "LoraLoaderModelOnly", model=model, lora_name="tiny_sd15.safetensors",
                  strength_model=0.5)
    assert [entry[0] for entry in patched["loras"]] == ["tiny_sd15.safetensors"] and patched["loras"][0][2] == 0.5
    assert model["loras"] == []


def test_an_empty_sd3_latent_samples_on_a_4_channel_model_as_an_empty_latent_does(node_ctx: NodeContext) -> None:
    model, clip, _ = nodes.impls["CheckpointLoaderSimple"](node_ctx, ckpt_name="sd15.safetensors")
    pos = run(node_ctx, "CLIPTextEncode", text="a", clip=clip)

    def sample(latent: dict[str, Any]) -> torch.Tensor:
        return run(node_ctx, "KSampler", model=model, seed=3, steps=2, cfg=1.0, sampler_name="euler",
                   scheduler="normal", positive=pos, negative=pos, latent_image=latent)["samples"]

    sd3 = sample(run(node_ctx, "EmptySD3LatentImage", width=64, height=64, batch_size=1))
    assert sd3.shape == (1, 4, 8, 8)
    assert torch.equal(sd3, sample(run(node_ctx, "EmptyLatentImage", width=64, height=64, batch_size=1)))
