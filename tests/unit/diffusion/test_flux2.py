"""FLUX.2 parts: diffusion models told apart from FLUX.1 by keys and shapes (Klein without, Dev with guidance),
ComfyUI's call (text padded at the front to 512 tokens, reference latents placed by index 10, 20, …, offset or
uxo, guidance 3.5 by default and none when disabled), fp8 files computing their dequantised weights, the FLUX.2 VAE
speaking ComfyUI's patchified batch-normalised latents, and Klein's Qwen3 encoder (template, padding to 512, hidden
states 9/18/27 side by side), Dev's Mistral encoder (the file's own Tekken tokenizer, hidden states 10/20/30, the
pruned form without its final norm). The model (Klein and Dev, guidance set, default and disabled), VAE and
encoders were also compared ad hoc with ComfyUI 0.8.0's own Flux (flux2 parameters), AutoencoderKL
(batch_norm_latent), Qwen3 llama with layers [9, 18, 27] and Mistral3Small24B (40 and 30 layers) on these tiny
files: equal to 1.5e-6 (model, VAE) and 2e-5 (encoders); the Tekken tokenizer to mistral_common's ids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.families import flux2, registry
from comfymesh.diffusion.latents import vae_codec
from comfymesh.diffusion.latents.formats import FLUX2
from comfymesh.diffusion.latents.previews import latent_rgb_tensor
from comfymesh.diffusion.models import flux2_vae, tiny_flux, tiny_flux2
from comfymesh.diffusion.models.checkpoint import load_unet_file, load_vae_file
from comfymesh.diffusion.models.fp8_weights import Fp8Linear
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.models.tiny_zimage import qwen3_shapes
from comfymesh.diffusion.sampling.ksampler import SamplingModel
from comfymesh.diffusion.text import klein_text, mistral_text, qwen_tokenizer
from comfymesh.diffusion.text.qwen_tokenizer import PAD_ID

CPU = torch.device("cpu")
needs_tokenizer = pytest.mark.usefixtures("qwen_tokenizer_ready")


def write(path: Path, state: dict[str, torch.Tensor]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("flux2")
    klein = tiny_flux.random_tensors(tiny_flux2.flux2_shapes(), 3, torch.float32)
    fp8 = tiny_flux2.fp8(klein)
    return {
        "klein": write(root / "klein.safetensors", klein),
        "fp8": write(root / "klein_fp8.safetensors", fp8),
        # the fp8 file's weights as float32: what its linears compute with
        "dequantised": write(root / "dequantised.safetensors", {k: v.float() for k, v in fp8.items()}),
        "dev": write(root / "dev.safetensors", {"model.diffusion_model." + k: v for k, v in tiny_flux.random_tensors(
            tiny_flux2.flux2_shapes(guidance=True), 4, torch.float32).items()}),
        "vae": write(root / "vae.safetensors", tiny_flux2.flux2_vae_tensors(tiny_flux2.flux2_vae_shapes(), 5,
                                                                            torch.float32)),
        "vae_small": write(root / "vae_small.safetensors", tiny_flux2.flux2_vae_tensors(
            tiny_flux2.flux2_vae_shapes(64, 32), 6, torch.float32)),
        "qwen3": write(root / "qwen3.safetensors", tiny_flux.random_tensors(tiny_flux2.klein_qwen3_shapes(), 7,
                                                                             torch.float32)),
        "qwen3_short": write(root / "qwen3_short.safetensors", tiny_flux.random_tensors(qwen3_shapes(), 8,
                                                                                         torch.float32)),
        "mistral": write(root / "mistral.safetensors", tiny_flux2.mistral_file_tensors(10, torch.float32)),
        "mistral_pruned": write(root / "mistral_pruned.safetensors", tiny_flux2.mistral_file_tensors(
            11, torch.float32, layers=30)),
    }


def sampling(path: Path) -> SamplingModel:
    parts = load_unet_file(path)
    assert parts.recognition is not None and parts.unet is not None
    return flux2.FAMILY.sampling_model(parts.unet, parts.recognition, CPU)


@pytest.fixture(scope="module")
def klein(files: dict[str, Path]) -> SamplingModel:
    return sampling(files["klein"])


def test_recognised_by_shape_and_apart_from_flux1(files: dict[str, Path], tmp_path: Path) -> None:
    for name in ("klein", "dev", "fp8"):  # no other family claims a FLUX.2 file
        assert [f.name for f in registry.families() if f.recognise(TensorSource(files[name])) is not None] == ["flux2"]
    family, layout = registry.recognise(TensorSource(files["klein"]))  # type: ignore[misc]
    assert family is flux2.FAMILY
    assert (layout.width, layout.heads, layout.head_dim, layout.depth, layout.depth_single) == (128, 4, 32, 1, 1)
    assert (layout.in_channels, layout.context_dim, layout.mlp_ratio, layout.guidance) == (128, 192, 3.0, False)
    assert layout.axes_dims == (8, 8, 8, 8)
    family, dev = registry.recognise(TensorSource(files["dev"]))  # type: ignore[misc]
    assert family is flux2.FAMILY and dev.guidance and dev.prefix == "model.diffusion_model."
    flux1 = write(tmp_path / "flux1.safetensors", tiny_flux.random_tensors(tiny_flux.flux_shapes(), 0, torch.float32))
    family, _ = registry.recognise(TensorSource(flux1))  # type: ignore[misc]
    assert family.name == "flux"


def test_registered_with_128_channel_latents() -> None:
    family = registry.for_clip_type("flux2")
    assert family is flux2.FAMILY and family.latent_format is FLUX2
    assert FLUX2.channels == 128
    x = torch.randn(1, 128, 3, 4)
    assert torch.equal(FLUX2.process_in(x), x) and torch.equal(FLUX2.process_out(x), x)


def test_preview_unfolds_the_cells() -> None:
    # one 32-channel pixel pattern folded into 128 channels: the preview is at twice the latent size
    z = torch.randn(1, 32, 6, 8)
    rgb = latent_rgb_tensor(flux2_vae.patchify(z), FLUX2)
    assert rgb.shape == (6, 8, 3)
    factors = torch.tensor(FLUX2.rgb_factors)
    expected = torch.einsum("chw,cr->hwr", z[0], factors) + torch.tensor(FLUX2.rgb_bias)
    assert torch.equal(rgb, (((expected + 1) / 2).clamp(0, 1) * 255).to(torch.uint8))


def test_text_is_padded_at_the_front_to_512(klein: SamplingModel) -> None:
    g = torch.Generator().manual_seed(0)
    x, ctx, t = torch.randn(1, 128, 4, 6, generator=g), torch.randn(1, 300, 192, generator=g), torch.tensor([0.6])
    padded = torch.cat([torch.zeros(1, 212, 192), ctx], dim=1)
    assert torch.equal(klein.unet(x, t, ctx, None), klein.unet(x, t, padded, None))
    assert not torch.allclose(klein.unet(x, t, ctx, None), klein.unet(x, t, torch.cat([ctx, torch.zeros(1, 212, 192)], 1), None))


def test_reference_placement() -> None:
    refs = [torch.zeros(1, 128, 2, 3), torch.zeros(1, 128, 4, 1)]
    index = flux2.reference_ids(refs, 5, 5, "index")
    assert [r[:, 0].unique().tolist() for r in index] == [[10.0], [20.0]]
    assert index[1][:, 1].max() == 3 and index[1][:, 2].max() == 0  # at the origin
    offset = flux2.reference_ids(refs, 5, 5, "offset")
    assert [r[:, 0].unique().tolist() for r in offset] == [[1.0], [1.0]]
    assert offset[1][:, 1].min() == 0 and offset[1][:, 2].min() == 3  # beside the first: the canvas stays squarer
    uxo = flux2.reference_ids(refs, 5, 5, "uxo")
    assert (uxo[0][0, :3] == torch.tensor([0.0, 5.0, 5.0])).all() and (uxo[1][0, :3] == torch.tensor([0.0, 7.0, 8.0])).all()
    assert torch.equal(flux2.text_ids(3)[:, 3], torch.tensor([0.0, 1.0, 2.0])) and not flux2.text_ids(3)[:, :3].any()


def test_references_join_the_image_tokens(klein: SamplingModel) -> None:
    g = torch.Generator().manual_seed(1)
    x, ctx, t = torch.randn(1, 128, 4, 4, generator=g), torch.randn(1, 512, 192, generator=g), torch.tensor([0.5])
    refs = [torch.randn(1, 128, 3, 5, generator=g)]
    call: Any = klein.unet  # Flux2Call: the denoiser passes an entry's inputs as keywords
    plain = call(x, t, ctx, None)
    by_index = call(x, t, ctx, None, refs=refs, ref_method="index")
    assert by_index.shape == plain.shape and not torch.allclose(by_index, plain)
    assert not torch.allclose(by_index, call(x, t, ctx, None, refs=refs, ref_method="offset"))
    inputs = flux2.entry_inputs({"reference_latents": refs})
    assert inputs is not None and inputs["ref_method"] == "index"  # FLUX.2's default
    assert flux2.entry_inputs({"reference_latents": refs, "reference_latents_method": "index_timestep_zero"})[
        "ref_method"] == "offset"  # type: ignore[index]


def test_guidance_default_and_disabled(files: dict[str, Path]) -> None:
    dev = sampling(files["dev"])
    assert torch.equal(flux2.entry_y(None, {}), torch.tensor([[3.5]]))
    g = torch.Generator().manual_seed(2)
    x, ctx, t = torch.randn(1, 128, 3, 3, generator=g), torch.randn(1, 512, 192, generator=g), torch.tensor([0.4])
    default = dev.unet(x, t, ctx, flux2.entry_y(None, {}))
    four = dev.unet(x, t, ctx, flux2.entry_y(None, {"guidance": 4.0}))
    disabled = dev.unet(x, t, ctx, flux2.entry_y(None, {"guidance": None}))
    assert not torch.allclose(default, four) and not torch.allclose(default, disabled)
    assert torch.isnan(flux2.entry_y(None, {"guidance": None})).all()


def test_fp8_file_computes_its_dequantised_weights(files: dict[str, Path]) -> None:
    quantised = sampling(files["fp8"])
    plain = sampling(files["dequantised"])
    module: Any = load_unet_file(files["fp8"]).unet
    assert isinstance(module.single_transformer_blocks[0].attn.to_qkv_mlp_proj, Fp8Linear)
    g = torch.Generator().manual_seed(3)
    x, ctx, t = torch.randn(1, 128, 3, 4, generator=g), torch.randn(1, 512, 192, generator=g), torch.tensor([0.7])
    torch.testing.assert_close(quantised.unet(x, t, ctx, None), plain.unet(x, t, ctx, None), rtol=1e-5, atol=1e-5)


def test_patchify_folds_cells_into_channels() -> None:
    z = torch.randn(2, 3, 4, 6)
    p = flux2_vae.patchify(z)
    assert p.shape == (2, 12, 2, 3)
    for c, pi, pj, i, j in ((1, 0, 1, 1, 2), (2, 1, 0, 0, 1), (0, 1, 1, 1, 0)):
        assert p[1, c * 4 + pi * 2 + pj, i, j] == z[1, c, 2 * i + pi, 2 * j + pj]
    assert torch.equal(flux2_vae.unpatchify(p), z)


def test_vae_speaks_normalised_patchified_latents(files: dict[str, Path]) -> None:
    vae: Any = load_vae_file(files["vae"])
    assert flux2_vae.is_flux2_vae(vae) and vae_codec.spatial_factor(vae) == 16
    pixels = torch.rand(1, 72, 100, 3, generator=torch.Generator().manual_seed(4))
    latent = vae_codec.encode(vae, pixels)
    assert latent.shape == (1, 128, 4, 6)  # cropped to 64×96 first
    cropped = pixels[:, 4:68, 2:98].movedim(-1, 1) * 2 - 1
    base: Any = type(vae).__mro__[1]  # AutoencoderKLFlux2: the 32-channel posterior
    with torch.no_grad():
        mean32 = base.encode(vae, cropped).latent_dist.mean
    stats = TensorSource(files["vae"])
    m, var = stats.get("bn.running_mean").view(1, -1, 1, 1), stats.get("bn.running_var").view(1, -1, 1, 1)
    torch.testing.assert_close(latent, (flux2_vae.patchify(mean32) - m) / torch.sqrt(var + 1e-4))
    with torch.no_grad():
        expected = base.decode(vae, flux2_vae.unpatchify(latent * torch.sqrt(var + 1e-4) + m)).sample
    image = vae_codec.decode(vae, latent)
    assert image.shape == (1, 64, 96, 3)
    torch.testing.assert_close(image, ((expected + 1) / 2).clamp(0, 1).movedim(1, -1))


def test_small_decoder_vae(files: dict[str, Path]) -> None:
    vae: Any = load_vae_file(files["vae_small"])
    assert list(vae.config.block_out_channels) == [64] * 4 and list(vae.config.decoder_block_out_channels) == [32] * 4
    image = vae_codec.decode(vae, torch.randn(1, 128, 2, 3))
    assert image.shape == (1, 32, 48, 3)


@needs_tokenizer
def test_klein_prompt_template_and_padding() -> None:
    ids, mask = klein_text.klein_tokens("a red fox")
    expected = qwen_tokenizer.qwen_token_ids("<|im_start|>user\na red fox<|im_end|>\n<|im_start|>assistant\n"
                                             "<think>\n\n</think>\n\n")
    assert len(ids) == 512 and ids[: len(expected)] == expected and set(ids[len(expected):]) == {PAD_ID}
    assert mask == [1] * len(expected) + [0] * (512 - len(expected))
    long_ids, long_mask = klein_text.klein_tokens("fox " * 600)
    assert len(long_ids) > 512 and all(long_mask)  # never cut


@needs_tokenizer
def test_klein_context_is_three_hidden_states_per_token(files: dict[str, Path]) -> None:
    family = registry.for_clip_type("flux2")
    assert family is not None
    encoders = family.load_text_encoders("flux2", [files["qwen3"]], CPU)
    (context, extras), = family.encode("a red fox", encoders, {})  # type: ignore[arg-type]
    assert context.shape == (1, 512, 3 * 64) and extras == {}
    ids, mask = klein_text.klein_tokens("a red fox")
    with torch.no_grad():
        states = encoders["qwen3"](input_ids=torch.tensor([ids]), attention_mask=torch.tensor([mask]),
                                   output_hidden_states=True).hidden_states
    for k, layer in enumerate((9, 18, 27)):
        torch.testing.assert_close(context[0, :, 64 * k:64 * (k + 1)], states[layer][0])


def test_encoders_that_klein_cannot_take(files: dict[str, Path]) -> None:
    with pytest.raises(ModelError, match="too few layers"):
        flux2.FAMILY.load_text_encoders("flux2", [files["qwen3_short"]], CPU)


def test_tekken_tokenizer_from_the_file() -> None:
    # the tokenizer ComfyUI builds from the file's tekken.json (checked ad hoc against mistral_common's Tekkenizer
    # on this file: equal ids, the template included)
    tokenizer = mistral_text.tekken_tokenizer(tiny_flux2.tiny_tekken())
    specials = tiny_flux2.TINY_TEKKEN_SPECIALS
    assert tokenizer.token_to_id("<s>") == 1 and tokenizer.token_to_id("[SYSTEM_PROMPT]") == 17
    merged = {token: specials + 256 + rank for rank, token in enumerate(tiny_flux2.TINY_TEKKEN_MERGES)}
    # specials are single ids; bytes follow the specials, merges the bytes; " cat" splits as " ", "c", "at"
    assert tokenizer.encode("[INST]the cat[/INST]", add_special_tokens=False).ids == [
        3, merged[b"the"], specials + ord(" "), specials + ord("c"), merged[b"at"], 4]
    assert tokenizer.encode("é", add_special_tokens=False).ids == [specials + 0xC3, specials + 0xA9]  # bytes


def test_dev_context_is_three_mistral_hidden_states_per_token(files: dict[str, Path]) -> None:
    encoders = flux2.FAMILY.load_text_encoders("flux2", [files["mistral"]], CPU)
    encoder = encoders["mistral"]
    ids = encoder.token_ids("a red fox")
    assert ids[0] == 1 and ids[1] == 17 and ids[-1] == 4  # <s>, [SYSTEM_PROMPT] … [/INST]; no padding
    (context, extras), = flux2.FAMILY.encode("a red fox", encoders, {})  # type: ignore[arg-type]
    assert context.shape == (1, len(ids), 3 * 64) and extras == {}
    with torch.no_grad():
        states = encoder.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    for k, layer in enumerate((10, 20, 30)):
        torch.testing.assert_close(context[0, :, 64 * k:64 * (k + 1)], states[layer][0])
    # the pruned (30-layer) form: its last hidden state is read before the final norm, which it does without
    pruned = flux2.FAMILY.load_text_encoders("flux2", [files["mistral_pruned"]], CPU)["mistral"]
    assert isinstance(pruned.model.norm, torch.nn.Identity)
    with torch.no_grad():
        out = pruned.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    torch.testing.assert_close(pruned.encode("a red fox")[0, :, 128:], out.last_hidden_state[0])
    # FLUX.2 Dev samples on it (192 = 3 × the tiny width)
    dev = sampling(files["dev"])
    assert dev.unet(torch.randn(1, 128, 2, 2), torch.tensor([0.5]), context, flux2.entry_y(None, {})).shape == (1, 128, 2, 2)


def test_mistral_file_without_its_tokenizer_is_refused(tmp_path: Path) -> None:
    state = tiny_flux2.mistral_file_tensors(9, torch.float32)
    del state["tekken_model"]
    with pytest.raises(ModelError, match="tekken_model"):
        flux2.FAMILY.load_text_encoders("flux2", [write(tmp_path / "mistral.safetensors", state)], CPU)


def test_tiled_vae_nodes_speak_the_128_channel_latent(files: dict[str, Path]) -> None:
    from comfymesh.diffusion.latents import tiled

    vae = load_vae_file(files["vae"])
    pixels = torch.rand(1, 96, 128, 3, generator=torch.Generator().manual_seed(5))
    latent = tiled.encode_tiled(vae, pixels, 64, 16)
    assert latent.shape == (1, 128, 6, 8) and torch.isfinite(latent).all()
    assert tiled.decode_tiled(vae, latent, 4, 1).shape == (1, 96, 128, 3)
