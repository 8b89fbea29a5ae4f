"""FLUX.1 in the family registry: DualCLIPLoader `flux` files, the conditioning (T5 context, CLIP-L pooled,
T5 prompt weights against the empty prompt), y = pooled ‖ guidance (3.5 by default, NaN disabled), Kontext
reference latents taken into the model's space per entry, ModelSamplingFlux's record, the all-in-one
checkpoint, and one euler step against the flow formula on the model's own output."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.families import flux, registry
from comfymesh.diffusion.latents.formats import FLUX
from comfymesh.diffusion.models import tiny_flux
from comfymesh.diffusion.models.checkpoint import load_checkpoint, load_unet_file
from comfymesh.diffusion.sampling.flux_sampling import FluxModelSampling
from comfymesh.diffusion.sampling.ksampler import SamplingModel, cond_entries, prepare_with_sigmas, run_prepared
from comfymesh.diffusion.text.flux_text import T5_MIN_LENGTH, clip_l_pooled
from comfymesh.diffusion.text.t5 import encode_t5, t5_tokens, t5_weighted_tokens

CPU = torch.device("cpu")
needs_t5 = pytest.mark.usefixtures("t5_tokenizer_ready")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_flux.make_tiny_flux(tmp_path_factory.mktemp("flux"), seed=5, dtype=torch.float32)


@pytest.fixture(scope="module")
def encoders(files: dict[str, Path]) -> dict[str, Any]:
    family = registry.for_clip_type("flux")
    assert family is flux.FAMILY
    return family.load_text_encoders("flux", [files["t5"], files["clip_l"]], CPU)  # either order


@pytest.fixture(scope="module")
def model(files: dict[str, Path]) -> SamplingModel:
    parts = load_unet_file(files["diffusion_model"])
    assert parts.recognition is not None and parts.recognition.family == "flux" and parts.unet is not None
    return flux.FAMILY.sampling_model(parts.unet, parts.recognition, CPU)


def test_registered_with_flux_latents_and_vae() -> None:
    family = registry.get("flux")
    assert family is flux.FAMILY and family.clip_types == ("flux",)
    assert family.latent_format is FLUX and family.vae_kind == "flux16" and not family.batches


def test_dual_clip_loader_refuses_other_pairs(files: dict[str, Path]) -> None:
    with pytest.raises(ModelError, match="one CLIP-L and one T5-XXL"):
        flux.FAMILY.load_text_encoders("flux", [files["clip_l"], files["clip_l"]], CPU)
    with pytest.raises(ModelError, match="one CLIP-L and one T5-XXL"):
        flux.FAMILY.load_text_encoders("flux", [files["t5"]], CPU)


@needs_t5
def test_conditioning_is_t5_context_and_clip_l_pooled(encoders: dict[str, Any]) -> None:
    (context, extras), = flux.FAMILY.encode("a photo of a cat", encoders, {})
    expected = encode_t5(encoders["t5"], t5_tokens("a photo of a cat", T5_MIN_LENGTH))
    assert context.shape == (1, 256, 64) and torch.equal(context, expected)
    assert torch.equal(extras["pooled_output"], clip_l_pooled(encoders["l"], "a photo of a cat"))
    assert set(extras) == {"pooled_output"}


@needs_t5
def test_t5_weights_move_tokens_from_the_empty_prompt(encoders: dict[str, Any]) -> None:
    pairs = t5_weighted_tokens("a (photo:1.5) of a cat", T5_MIN_LENGTH)
    weights = [w for _, w in pairs]
    assert [i for i, _ in pairs] == t5_tokens("a photo of a cat", T5_MIN_LENGTH)  # each segment on its own
    assert 1.5 in weights and len(pairs) == 256
    (context, _), = flux.FAMILY.encode("a (photo:1.5) of a cat", encoders, {})
    plain = encode_t5(encoders["t5"], [i for i, _ in pairs])
    empty = encode_t5(encoders["t5"], [1] + [0] * 255)
    for j, w in enumerate(weights):
        want = plain[0, j] if w == 1.0 else empty[0, j] + w * (plain[0, j] - empty[0, j])
        assert torch.allclose(context[0, j], want, atol=1e-6)


def test_y_is_pooled_then_guidance(model: SamplingModel) -> None:
    pooled = torch.randn(1, 32)
    ctx = torch.randn(1, 7, 64)
    default, set_, disabled = cond_entries(
        [[ctx, {"pooled_output": pooled}], [ctx, {"pooled_output": pooled, "guidance": 2.0}],
         [ctx, {"pooled_output": pooled, "guidance": None}]], model, (8, 8), "positive")
    for entry, g in ((default, 3.5), (set_, 2.0)):
        assert entry.y is not None and entry.y.shape == (1, 33)
        assert torch.equal(entry.y[:, :32], pooled) and float(entry.y[0, 32]) == g
    assert disabled.y is not None and math.isnan(float(disabled.y[0, 32]))
    # no pooled output: zeros, as ComfyUI's FLUX model takes a missing y
    entry, = cond_entries([[ctx, {}]], model, (8, 8), "positive")
    assert entry.y is not None and not entry.y[:, :32].any()


def test_reference_latents_are_taken_into_the_model_space(model: SamplingModel) -> None:
    ref = torch.randn(1, 16, 4, 6)
    ctx = torch.randn(1, 7, 64)
    plain, kontext, unknown = cond_entries(
        [[ctx, {}], [ctx, {"reference_latents": [ref], "reference_latents_method": "index"}],
         [ctx, {"reference_latents": [ref], "reference_latents_method": "index_timestep_zero"}]],
        model, (8, 8), "positive")
    assert plain.model_inputs is None
    assert kontext.model_inputs is not None and kontext.model_inputs["ref_method"] == "index"
    assert torch.allclose(kontext.model_inputs["refs"][0], (ref - 0.1159) * 0.3611)
    assert unknown.model_inputs is not None and unknown.model_inputs["ref_method"] == "offset"


def test_model_sampling_flux_record_sets_the_shift(model: SamplingModel) -> None:
    assert isinstance(model.sampling, FluxModelSampling) and model.sampling.shift == pytest.approx(1.15)
    shifted = flux.FAMILY.model_sampling({"kind": "flux", "shift": 0.7}, model)
    assert isinstance(shifted.sampling, FluxModelSampling) and shifted.sampling.shift == pytest.approx(0.7)


def test_one_euler_step_is_the_flow_formula(model: SamplingModel) -> None:
    # x1 = x0 + (x0 − D(x0, σ0)) / σ0 · (σ1 − σ0), with D = x − σ·v and v the model's own output, the entry's
    # pooled ‖ guidance as y and its reference latent in the model's space
    gen = torch.Generator().manual_seed(0)
    ctx = torch.randn(1, 9, 64, generator=gen)
    pooled = torch.randn(1, 32, generator=gen)
    ref = torch.randn(1, 16, 8, 8, generator=gen)
    cond = [[ctx, {"pooled_output": pooled, "guidance": 4.0, "reference_latents": [ref]}]]
    sigmas = torch.tensor([0.9, 0.6])
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    prep = prepare_with_sigmas(model, sigmas, seed=7, cfg=1.0, sampler_name="euler", positive=cond, negative=None,
                               latent=latent)
    assert not isinstance(prep, dict)
    x0 = prep.x.clone()
    y = torch.cat([pooled, torch.tensor([[4.0]])], dim=1)
    v = model.unet(x0, torch.tensor([0.9]), ctx, y, refs=[FLUX.process_in(ref)], ref_method="offset")  # type: ignore[call-arg]
    expected = x0 + (x0 - (x0 - 0.9 * v)) / 0.9 * (0.6 - 0.9)
    out = run_prepared(prep)["samples"]
    # stopped above σ = 0, the CONST latent is scaled back by 1 / (1 − σ_last), as ComfyUI's inverse_noise_scaling
    assert torch.allclose(out, FLUX.process_out(expected / (1 - 0.6)), atol=1e-5)


@pytest.mark.parametrize("in_channels", [tiny_flux.FILL_CHANNELS, tiny_flux.CANNY_CHANNELS])
def test_fill_and_canny_models_take_the_concat_in_a_step(tmp_path: Path, in_channels: int) -> None:
    # the model's input is x ‖ concat as ComfyUI's Flux.concat_cond makes it: the image latent in the model's
    # space, then (Fill) the pixel mask folded 8×8 into 64 channels; the step is the flow formula on its output
    from safetensors.torch import save_file

    path = tmp_path / "variant.safetensors"
    save_file(tiny_flux.random_tensors(tiny_flux.flux_shapes(in_channels=in_channels), 9, torch.float32), str(path))
    parts = load_unet_file(path)
    assert parts.recognition is not None and parts.unet is not None
    model = flux.FAMILY.sampling_model(parts.unet, parts.recognition, CPU)
    gen = torch.Generator().manual_seed(1)
    ctx, pooled = torch.randn(1, 5, 64, generator=gen), torch.randn(1, 32, generator=gen)
    image, mask = torch.randn(1, 16, 6, 8, generator=gen), (torch.rand(1, 1, 48, 64, generator=gen) > 0.5).float()
    cond = [[ctx, {"pooled_output": pooled, "guidance": 30.0, "concat_latent_image": image, "concat_mask": mask}]]
    sigmas = torch.tensor([1.0, 0.5])
    prep = prepare_with_sigmas(model, sigmas, seed=3, cfg=1.0, sampler_name="euler", positive=cond, negative=None,
                               latent={"samples": torch.zeros(1, 16, 6, 8)})
    assert not isinstance(prep, dict)
    x0 = prep.x.clone()
    concat = [FLUX.process_in(image)]
    if in_channels == tiny_flux.FILL_CHANNELS:
        concat.append(mask.view(1, 6, 8, 8, 8).permute(0, 2, 4, 1, 3).reshape(1, 64, 6, 8))
    y = torch.cat([pooled, torch.tensor([[30.0]])], dim=1)
    v = model.unet(torch.cat([x0, *concat], dim=1), torch.tensor([1.0]), ctx, y)
    expected = x0 + v * (0.5 - 1.0)
    assert torch.allclose(run_prepared(prep)["samples"], FLUX.process_out(expected / (1 - 0.5)), atol=1e-5)


def test_all_in_one_checkpoint(tmp_path: Path) -> None:
    path = tiny_flux.make_tiny_flux_checkpoint(tmp_path / tiny_flux.CHECKPOINT, seed=2)
    parts = load_checkpoint(path)
    assert parts.recognition is not None and parts.recognition.family == "flux"
    assert sorted(parts.clips) == ["l", "t5"] and parts.vae is not None and parts.unet is not None
    # fp8 checkpoint weights stay fp8 in memory
    assert any(p.dtype == torch.float8_e4m3fn for p in parts.unet.parameters())


def test_scaled_fp8_t5_computes_the_dequantised_encoder(tmp_path: Path) -> None:
    # t5xxl_fp8_e4m3fn_scaled: linears stay fp8 (wo too, whose input transformers would round to fp8) and compute
    # as the file's fp8·scale weights would in float32
    from safetensors.torch import save_file

    from comfymesh.diffusion.models.fp8_weights import Fp8Linear
    from comfymesh.diffusion.models.tensor_source import TensorSource
    from comfymesh.diffusion.text.t5 import load_t5_file

    state = tiny_flux.scaled_fp8(tiny_flux.random_tensors(tiny_flux.t5_shapes(), 1, torch.float32))
    save_file(state, str(tmp_path / "fp8.safetensors"))
    plain = {k: v.float() * state[k[:-len(".weight")] + ".scale_weight"] if v.dtype == torch.float8_e4m3fn else v
             for k, v in state.items() if not k.endswith(".scale_weight") and k != "scaled_fp8"}
    save_file(plain, str(tmp_path / "plain.safetensors"))
    fp8 = load_t5_file(TensorSource(tmp_path / "fp8.safetensors"), CPU)
    ref = load_t5_file(TensorSource(tmp_path / "plain.safetensors"), CPU)
    wo: Any = fp8.get_submodule("encoder.block.0.layer.1.DenseReluDense.wo")
    assert isinstance(wo, Fp8Linear) and wo.weight.dtype == torch.float8_e4m3fn
    ids = [3, 9, 1202, 13, 1, 0, 0]
    assert torch.allclose(encode_t5(fp8, ids), encode_t5(ref, ids), atol=1e-4)
