"""The fast path of the flow-matching families on CPU: each family's static form gives its eager call's output,
buckets key every conditioning tensor's shape (FLUX's disabled guidance, the text length), a bucket builds in
the background while calls run eagerly and then matches eager, reference latents and LoRA views stay eager,
and a VAE file's decode takes the fast path too.

Compilation here is dynamo with its `eager` backend (what the graphs trace, in seconds; the GPU bench runs
inductor + CUDA graphs): its output is compared with the eager call at atol 1e-5 (it measured equal)."""

from __future__ import annotations

import copy
import json
import math
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from comfymesh.config.fast_path import FastPathSettings
from comfymesh.diffusion.families import loading, registry
from comfymesh.diffusion.fast.decoder import FastDecoder
from comfymesh.diffusion.fast.denoiser import FastDenoiser
from comfymesh.diffusion.fast.manifest import WarmTarget, warmup_from_manifest
from comfymesh.diffusion.fast.tiers import bucket_key
from comfymesh.diffusion.latents import vae_codec
from comfymesh.diffusion.memory.fit import tensor_bytes
from comfymesh.diffusion.models import (
    fp8_weights,
    tiny_chroma_radiance,
    tiny_flux,
    tiny_flux2,
    tiny_lora,
    tiny_qwen_image,
    tiny_sd3,
    tiny_zimage,
)
from comfymesh.diffusion.models.cache import ModelCache
from comfymesh.diffusion.models.flow_lora import model_lock
from comfymesh.diffusion.models.fp8_weights import Fp8Linear
from comfymesh.diffusion.sampling.ksampler import SamplingModel

CPU = torch.device("cpu")
CPU_DTYPE = torch.float32  # the compute dtype on the CPU
ATOL = 1e-5
FAMILIES = ("flux", "chroma", "sd3", "zimage", "qwen_image", "flux2", "chroma_radiance")


def _shapes(family: str) -> dict[str, tuple[int, ...]]:
    # the smallest layouts each family builds (FLUX/Chroma rope axes need 128-wide heads, Z-Image width 256)
    if family == "flux":
        return tiny_flux.flux_shapes(width=128, head_dim=128, context=32)
    if family == "chroma":
        return tiny_flux.chroma_shapes(width=128, head_dim=128, hidden=32, layers=2, context=32)
    if family == "sd3":
        return tiny_sd3.mmdit_shapes(width=64, blocks=2, context_dim=32)
    if family == "zimage":
        return tiny_zimage.zimage_shapes(dim=256, heads=4, layers=1, refiners=1, cap_dim=32)
    if family == "flux2":
        return tiny_flux2.flux2_shapes(guidance=True)
    if family == "chroma_radiance":
        return tiny_chroma_radiance.radiance_shapes(width=128, head_dim=128)
    return tiny_qwen_image.qwen_image_shapes(layers=1, text_dim=32)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fast_families")
    out = {}
    for family in FAMILIES:
        out[family] = root / f"{family}.safetensors"
        save_file(tiny_flux.random_tensors(_shapes(family), 3, torch.float32), str(out[family]))
    return out


@pytest.fixture(scope="module")
def cache() -> ModelCache:
    return ModelCache(budget_bytes=2**30, device=CPU, fast=FastPathSettings(fast_path=True, compile=False))


def _eager(cache: ModelCache, path: Path) -> tuple[SamplingModel, torch.nn.Module, Any]:
    ckpt = cache.unet_file(path)
    module, rec = ckpt.unet()
    family = registry.get(rec.family)
    assert family is not None and family.fast_path
    return family.sampling_model(module, rec, CPU), module, family


def _inputs(model: SamplingModel, text: int = 5, seed: int = 1) -> tuple[torch.Tensor, ...]:
    """CFG-sized (batch 2) model inputs: latent, timestep, context, y (FLUX: pooled ‖ guidance 3.5)."""
    g = torch.Generator().manual_seed(seed)
    frames = (1,) if model.latent_format.channels == 16 and model.family == "qwen_image" else ()
    side = 16 if model.family == "chroma_radiance" else 6  # pixels: one 16-pixel patch
    x = torch.randn(2, model.latent_format.channels, *frames, side, side, generator=g)
    t = torch.full((2,), float(model.sampling.timestep(torch.tensor(0.7))))
    ctx = torch.randn(2, text, model.context_dim, generator=g)
    y = None if model.adm is None else torch.randn(2, model.adm, generator=g)
    if model.family == "flux":
        y[:, -1] = 3.5  # type: ignore[index]
    return x, t, ctx, y  # type: ignore[return-value]


@pytest.mark.parametrize("family", FAMILIES)
def test_static_form_gives_the_family_call(family: str, files: dict[str, Path], cache: ModelCache) -> None:
    eager_model, _, _ = _eager(cache, files[family])
    fast = cache.sampling_model(cache.unet_file(files[family])).unet
    assert isinstance(fast, FastDenoiser) and fast is cache.sampling_model(cache.unet_file(files[family])).unet
    args = _inputs(eager_model)
    with torch.no_grad():
        assert torch.equal(fast(*args), eager_model.unet(*args))
    assert fast.fallbacks == 0


def test_buckets_key_guidance_and_text_length(files: dict[str, Path], cache: ModelCache) -> None:
    model, module, family = _eager(cache, files["flux"])
    form = family.static_form(module)
    x, t, ctx, y = _inputs(model)
    guided = bucket_key(*form.inputs(x, t, ctx, y))
    disabled_y = y.clone()
    disabled_y[:, -1] = math.nan  # FluxDisableGuidance: the guidance embedding is left out
    disabled = bucket_key(*form.inputs(x, t, ctx, disabled_y))
    longer = bucket_key(*form.inputs(x, t, torch.cat([ctx, ctx], 1), y))
    assert guided[4] == (2,) and disabled[4] is None  # x, t, ctx, pooled, guidance
    assert len({guided, disabled, longer}) == 3 and longer[2] == (2, 10, model.context_dim)
    with torch.no_grad():
        fast = cache.sampling_model(cache.unet_file(files["flux"])).unet
        assert torch.equal(fast(x, t, ctx, disabled_y), model.unet(x, t, ctx, disabled_y))


@pytest.mark.parametrize("family", ["flux", "qwen_image", "flux2", "chroma_radiance"])
def test_bucket_builds_in_background_then_matches_eager(family: str, files: dict[str, Path],
                                                        cache: ModelCache) -> None:
    model, module, fam = _eager(cache, files[family])
    fast = FastDenoiser(family, model.unet, fam.static_form(module), CPU, model_lock(module), compile=True,
                        backend="eager")
    args = _inputs(model)
    with torch.no_grad():
        eager = model.unet(*args)
        first = fast(*args)  # starts the bucket on the builder thread, runs eagerly meanwhile
        assert torch.equal(first, eager)
        assert fast.wait(timeout=120)
        [bucket] = fast.buckets.values()
        assert bucket.failed is None and bucket.tier == "compiled" and bucket.key[0] == tuple(args[0].shape)
        second = fast(*args)
    assert bucket.calls == 1
    assert torch.allclose(second, eager, atol=ATOL, rtol=0)


def test_reference_latents_run_eagerly(files: dict[str, Path], cache: ModelCache) -> None:
    model, _, _ = _eager(cache, files["qwen_image"])
    fast = cache.sampling_model(cache.unet_file(files["qwen_image"])).unet
    assert isinstance(fast, FastDenoiser)
    x, t, ctx, y = _inputs(model)
    refs = [torch.randn(1, 16, 1, 4, 4, generator=torch.Generator().manual_seed(2))]
    before, calls = fast.fallbacks, len(fast.buckets)
    with torch.no_grad():
        out = fast(x, t, ctx, y, refs=refs, ref_method="index")
        call: Any = model.unet  # a family's call takes the entry's inputs as keywords
        assert torch.equal(out, call(x, t, ctx, y, refs=refs, ref_method="index"))
        assert not torch.equal(out, model.unet(x, t, ctx, y))
    assert fast.fallbacks == before + 1 and len(fast.buckets) == calls


def test_lora_views_and_the_switch_stay_eager(files: dict[str, Path], tmp_path: Path) -> None:
    lora = tiny_lora.write(tmp_path / "flux_lora.safetensors", tiny_lora.lora_for(files["flux"], "kohya"))
    on = ModelCache(budget_bytes=2**30, device=CPU, fast=FastPathSettings(fast_path=True, compile=False))
    ckpt = on.unet_file(files["flux"])
    assert isinstance(on.sampling_model(ckpt).unet, FastDenoiser)
    assert not isinstance(on.sampling_model(ckpt, [(lora, 0.8)]).unet, FastDenoiser)
    off = ModelCache(budget_bytes=2**30, device=CPU, fast=FastPathSettings(fast_path=False))
    assert not isinstance(off.sampling_model(off.unet_file(files["flux"])).unet, FastDenoiser)


def test_vae_file_decodes_on_the_fast_path(tmp_path: Path) -> None:
    path = tmp_path / "ae.safetensors"
    save_file(tiny_flux.random_tensors(tiny_zimage.flux_vae_shapes(), 4, torch.float32), str(path))
    cache = ModelCache(budget_bytes=2**30, device=CPU, fast=FastPathSettings(fast_path=True, compile=True))
    digest, vae = cache.vae_file(path)
    decoder = cache.vae_file_decoder(digest, vae)
    assert isinstance(decoder, FastDecoder) and decoder is cache.vae_file_decoder(digest, vae)
    decoder.backend = "eager"
    latent = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        eager = vae_codec.decode(vae, latent)
        assert torch.equal(vae_codec.decode(vae, latent, decoder), eager)  # starts the bucket, decodes eagerly
        assert decoder.wait(timeout=120)
        [bucket] = decoder.buckets.values()
        assert bucket.failed is None and bucket.tier == "compiled"
        assert torch.allclose(vae_codec.decode(vae, latent, decoder), eager, atol=ATOL, rtol=0)
    assert cache.unload() and cache.vae_file_decoder(digest, vae) is None  # dropped with its entry
    assert ModelCache(budget_bytes=2**30, device=CPU,
                      fast=FastPathSettings(fast_path=True, compile=False)).vae_file_decoder(digest, vae) is None


def test_warmup_manifest_starts_a_family_bucket(files: dict[str, Path], tmp_path: Path) -> None:
    cache = ModelCache(budget_bytes=2**30, device=CPU, fast=FastPathSettings(fast_path=True, compile=True))
    vae_path = tmp_path / "ae.safetensors"
    save_file(tiny_flux.random_tensors(tiny_zimage.flux_vae_shapes(), 4, torch.float32), str(vae_path))
    manifest = tmp_path / "warmup.json"
    manifest.write_text(json.dumps([{"diffusion_model": files["flux"].name, "vae": "ae.safetensors", "width": 48,
                                     "height": 48, "batch": 1, "text_length": 5, "compile": False}]))

    def load(entry: dict[str, Any]) -> WarmTarget:
        model = cache.sampling_model(cache.unet_file(files[Path(entry["diffusion_model"]).stem]))
        digest, vae = cache.vae_file(tmp_path / entry["vae"])
        return WarmTarget(model, cache.vae_file_decoder(digest, vae), 16)

    with torch.no_grad():
        assert warmup_from_manifest(load, manifest) == ["flux.safetensors@48x48x1"]
        target = load({"diffusion_model": "flux.safetensors", "vae": "ae.safetensors"})
        fast, decoder = target.model.unet, target.decoder
        assert isinstance(fast, FastDenoiser) and fast.wait(timeout=60)
        assert decoder is not None and decoder.wait(timeout=60)
        # the bucket a KSampler call of that size makes: CFG's batch of 2, 6×6 latents, 5 tokens, guidance 3.5
        [key] = fast.buckets
        static = fast.form.inputs(*_inputs(target.model))
        assert static is not None and key == bucket_key(*static)
    assert [(b.key[0], b.tier) for b in decoder.buckets.values()] == [((1, 16, 6, 6), "eager")]


def test_fast_calls_wait_for_a_lora_swap(files: dict[str, Path], cache: ModelCache) -> None:
    model, module, _ = _eager(cache, files["sd3"])
    fast = cache.sampling_model(cache.unet_file(files["sd3"])).unet
    args = _inputs(model)
    out: list[torch.Tensor] = []

    def call() -> None:
        with torch.no_grad():
            out.append(fast(*args))

    with model_lock(module):  # what a LoRA view holds while its weights are swapped in
        worker = threading.Thread(target=call)
        worker.start()
        worker.join(timeout=0.5)
        assert worker.is_alive() and not out  # the fast call never runs on swapped weights
    worker.join(timeout=60)
    with torch.no_grad():
        assert len(out) == 1 and torch.equal(out[0], model.unet(*args))


def test_fill_model_takes_its_concat_on_the_fast_path(tmp_path: Path, cache: ModelCache) -> None:
    # FLUX.1 Fill: x ‖ the 80 concat channels in, the latent's 16 out, the same on the fast path as eagerly
    path = tmp_path / "flux_fill.safetensors"
    shapes = tiny_flux.flux_shapes(width=128, head_dim=128, context=32, in_channels=tiny_flux.FILL_CHANNELS)
    save_file(tiny_flux.random_tensors(shapes, 3, torch.float32), str(path))
    eager_model, _, _ = _eager(cache, path)
    fast = cache.sampling_model(cache.unet_file(path)).unet
    assert isinstance(fast, FastDenoiser) and eager_model.in_channels == tiny_flux.FILL_CHANNELS
    x, t, ctx, y = _inputs(eager_model)
    x = torch.cat([x, torch.randn(2, tiny_flux.FILL_CHANNELS - 16, 6, 6, generator=torch.Generator().manual_seed(2))], 1)
    with torch.no_grad():
        out = fast(x, t, ctx, y)
        assert out.shape == (2, 16, 6, 6) and torch.equal(out, eager_model.unet(x, t, ctx, y))
    assert fast.fallbacks == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_an_fp8_weight_dtype_holds_the_linears_in_fp8_with_the_rounded_weights_numerics(
        family: str, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    cache = ModelCache(budget_bytes=2**30, device=CPU, fast=FastPathSettings(fast_path=False))
    default, rec = cache.unet_file(files[family]).unet()
    full_width: list[str] = []  # linears still at the compute dtype's width once the file's weights are in

    def hold_in_after_load(model: torch.nn.Module, storage: torch.dtype) -> None:
        full_width.extend(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear))
        fp8_weights.hold_in(model, storage)

    monkeypatch.setattr(loading, "hold_in", hold_in_after_load)
    held_ckpt = cache.unet_file(files[family], "fp8_e4m3fn")
    # the file's linears were held in fp8 as they loaded (the model never existed at full width); Chroma
    # Radiance's NeRF head loads apart from the transformer's file state and is held afterwards
    assert all(name.startswith("head.") for name in full_width), full_width[:4]
    held, _ = held_ckpt.unet()
    assert not any(isinstance(m, torch.nn.Linear) for m in held.modules())
    assert all(m.weight.dtype == torch.float8_e4m3fn for m in held.modules() if isinstance(m, Fp8Linear))
    # ComfyUI's numerics for that weight_dtype: every weight rounded to an fp8 value, computed in the compute dtype
    rounded = copy.deepcopy(default)
    with torch.no_grad():
        for param in rounded.parameters():
            param.copy_(param.to(torch.float8_e4m3fn).to(param.dtype))
    fam = registry.get(rec.family)
    assert fam is not None
    args = _inputs(fam.sampling_model(default, rec, CPU))
    with torch.no_grad():
        assert torch.equal(fam.sampling_model(held, rec, CPU).unet(*args), fam.sampling_model(rounded, rec, CPU).unet(*args))
    # the budget's estimate from the file never falls short of what the held model takes (about a quarter of
    # float32's bytes); Chroma Radiance's patch convolution, loaded as a linear, is counted in the compute dtype
    estimate = sum(tensor_bytes([files[family]], CPU_DTYPE, torch.float8_e4m3fn).values())
    assert 0.7 * estimate <= held_ckpt.nbytes <= 1.02 * estimate
    assert held_ckpt.nbytes < 0.5 * cache.unet_file(files[family]).nbytes
