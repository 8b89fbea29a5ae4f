"""LoRA on the registered flow families (FLUX, FLUX.2, Chroma, SD3.5, Z-Image, Qwen-Image): LoRA keys in kohya's
(ComfyUI names), diffusers/PEFT and AI-toolkit forms resolved to our diffusers modules, fused weights patched
slice by slice as ComfyUI's offset patches do, strengths and stacks, fp8 linears (FLUX's, Z-Image's and
Qwen-Image's), LoHa and LoKr, and the cache's patched entries (the base model untouched, strength 0 bit-identical)."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfymesh.contracts.errors import NodeInputError
from comfymesh.diffusion.families import flux
from comfymesh.diffusion.models import (
    flow_lora,
    tiny_flux,
    tiny_flux2,
    tiny_lora,
    tiny_qwen_image,
    tiny_sd3,
    tiny_zimage,
)
from comfymesh.diffusion.models.cache import LoadedCheckpoint, ModelCache
from comfymesh.diffusion.models.fp8_weights import Fp8Linear
from comfymesh.diffusion.models.lora import Adapter, LoHa, LoKr, LoraPair, adapters_of, read_lora
from comfymesh.diffusion.models.tensor_source import TensorSource

from .test_flux import reference_flux

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def cache() -> ModelCache:
    return ModelCache(budget_bytes=2**30, device=CPU)


def _family_file(family: str, root: Path) -> Path:
    if family == "flux":
        return tiny_flux.make_tiny_flux(root, dtype=torch.float32)["diffusion_model"]
    if family == "flux2":
        path = root / "flux2.safetensors"
        save_file(tiny_flux.random_tensors(tiny_flux2.flux2_shapes(), 0, torch.float32), str(path))
        return path
    if family == "chroma":
        path = root / "chroma.safetensors"
        save_file(tiny_flux.random_tensors(tiny_flux.chroma_shapes(), 0, torch.float32), str(path))
        return path
    if family == "sd3":
        return tiny_sd3.make_tiny_sd3(root, dtype=torch.float32)["diffusion_models"]
    if family == "zimage":
        return tiny_zimage.make_tiny_zimage(root, dtype=torch.float32)["diffusion_models"]
    return tiny_qwen_image.make_tiny_qwen_image(root, dtype=torch.float32)["diffusion_models"]


FAMILIES = ("flux", "flux2", "chroma", "sd3", "zimage", "qwen_image")
# a fused (or renamed) ComfyUI weight → a diffusers weight and the rows of the ComfyUI weight it holds
# (written here from the architectures, not from the converters)
SLICES: dict[str, tuple[str, str, int, int]] = {  # family → (ComfyUI key, module key, chunk, chunks)
    "flux": ("double_blocks.0.img_attn.qkv.weight", "transformer_blocks.0.attn.to_k.weight", 1, 3),
    "flux2": ("double_blocks.0.txt_attn.qkv.weight", "transformer_blocks.0.attn.add_k_proj.weight", 1, 3),
    "chroma": ("double_blocks.0.txt_attn.qkv.weight", "transformer_blocks.0.attn.add_v_proj.weight", 2, 3),
    "sd3": ("joint_blocks.0.x_block.attn.qkv.weight", "transformer_blocks.0.attn.to_v.weight", 2, 3),
    "zimage": ("layers.0.attention.qkv.weight", "layers.0.attention.to_q.weight", 0, 3),
    "qwen_image": ("transformer_blocks.0.attn.to_k.weight", "transformer_blocks.0.attn.to_k.weight", 0, 1),
}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory, cache: ModelCache) -> dict[str, tuple[LoadedCheckpoint, Path]]:
    out = {}
    for family in FAMILIES:
        path = _family_file(family, tmp_path_factory.mktemp(family))
        out[family] = (cache.unet_file(path), path)
    return out


def _loras(family: str, ckpt: LoadedCheckpoint, path: Path, root: Path, seed: int = 1) -> tuple[Path, Path]:
    linears = tiny_lora.linear_keys(TensorSource(path))
    if family == "chroma":  # its approximator takes ComfyUI-named keys only (see the test below)
        linears = {k: v for k, v in linears.items() if not k.startswith("distilled_guidance_layer.")}
    kohya = tiny_lora.kohya_lora(linears, seed=seed)
    assert ckpt.parts.lora_map is not None
    peft = tiny_lora.peft_from_kohya(kohya, linears, ckpt.parts.lora_map)
    return (tiny_lora.write(root / f"{family}_kohya_{seed}.safetensors", kohya),
            tiny_lora.write(root / f"{family}_peft_{seed}.safetensors", peft))


def _model_out(cache: ModelCache, ckpt: LoadedCheckpoint, loras: list[tuple[Path, float]]) -> torch.Tensor:
    sm = cache.sampling_model(ckpt, loras)
    gen = torch.Generator().manual_seed(7)
    channels = sm.in_channels
    x = torch.randn(1, channels, 1, 8, 8, generator=gen) if sm.family == "qwen_image" else \
        torch.randn(1, channels, 8, 8, generator=gen)
    ctx = torch.randn(1, 4, sm.context_dim, generator=gen)
    y = None
    if sm.adm is not None:
        y = torch.randn(1, sm.adm, generator=gen)
        if sm.family == "flux":
            y[:, -1] = 3.5
    with torch.no_grad():
        out: torch.Tensor = sm.unet(x, torch.tensor([0.5]), ctx, y)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_every_kohya_and_peft_key_fits(family: str, loaded: dict[str, Any], tmp_path: Path) -> None:
    ckpt, path = loaded[family]
    kohya, peft = _loras(family, ckpt, path, tmp_path)
    for file in (kohya, peft):
        adapters = read_lora(file)
        assert adapters and flow_lora.fitting(ckpt.parts.unet, ckpt.parts.lora_map, adapters) == set(adapters)


@pytest.mark.parametrize("family", FAMILIES)
def test_patched_slice_is_w_plus_scaled_up_down(family: str, loaded: dict[str, Any], tmp_path: Path) -> None:
    ckpt, path = loaded[family]
    kohya, _ = _loras(family, ckpt, path, tmp_path)
    tensors = load_file(str(kohya))
    file_key, module_key, chunk, chunks = SLICES[family]
    name = "lora_unet_" + file_key[: -len(".weight")].replace(".", "_")
    up, down = tensors[f"{name}.lora_up.weight"], tensors[f"{name}.lora_down.weight"]
    alpha, rank = float(tensors[f"{name}.alpha"]), down.shape[0]
    strength = 0.75
    overrides, used = flow_lora.patched_weights(ckpt.parts.unet, ckpt.parts.lora_map, [(read_lora(kohya), strength)])
    assert name in used[0]
    full = strength * (up @ down) * alpha / rank
    rows = full.shape[0] // chunks
    base = dict(ckpt.parts.unet.named_parameters())[module_key]
    expected = base + full[chunk * rows:(chunk + 1) * rows]
    assert torch.allclose(overrides[module_key], expected, atol=1e-6)
    assert not torch.equal(overrides[module_key], base)


@pytest.mark.parametrize("family", FAMILIES)
def test_strength_zero_is_the_base_and_kohya_equals_peft(family: str, loaded: dict[str, Any], cache: ModelCache,
                                                          tmp_path: Path) -> None:
    ckpt, path = loaded[family]
    kohya, peft = _loras(family, ckpt, path, tmp_path)
    before = {k: v.clone() for k, v in ckpt.parts.unet.state_dict().items()}
    base = _model_out(cache, ckpt, [])
    assert torch.equal(base, _model_out(cache, ckpt, [(kohya, 0.0)]))
    with_kohya = _model_out(cache, ckpt, [(kohya, 1.0)])
    with_peft = _model_out(cache, ckpt, [(peft, 1.0)])
    assert (with_kohya - base).abs().max() > 1e-4
    assert torch.allclose(with_kohya, with_peft, atol=1e-6), (with_kohya - with_peft).abs().max()
    assert torch.equal(base, _model_out(cache, ckpt, []))  # the cached base is untouched
    assert all(torch.equal(before[k], v) for k, v in ckpt.parts.unet.state_dict().items())


def test_flux_lora_matches_comfyui_reference_on_patched_weights(tmp_path: Path) -> None:
    """A kohya FLUX LoRA over every linear, and the reference FLUX forward (ComfyUI's formulas on ComfyUI's
    names) run on W + ΔW computed here: every fused slice lands where ComfyUI's patch puts it."""
    state = tiny_flux.random_tensors(tiny_flux.flux_shapes(width=128, head_dim=64, depth=2, depth_single=2), 0,
                                     torch.float32)
    path = tmp_path / "dev.safetensors"
    save_file(state, str(path))
    cache = ModelCache(budget_bytes=2**30, device=CPU)
    ckpt = cache.unet_file(path)
    linears = tiny_lora.linear_keys(TensorSource(path))
    kohya = tiny_lora.kohya_lora(linears, seed=3, scale=0.1)
    lora_path = tiny_lora.write(tmp_path / "k.safetensors", kohya)
    patched = dict(state)
    for key in linears:
        name = "lora_unet_" + key[: -len(".weight")].replace(".", "_")
        up, down = kohya[f"{name}.lora_up.weight"], kohya[f"{name}.lora_down.weight"]
        patched[key] = state[key] + 0.8 * (up @ down) * float(kohya[f"{name}.alpha"]) / down.shape[0]
    sm = cache.sampling_model(ckpt, [(lora_path, 0.8)])
    gen = torch.Generator().manual_seed(3)
    x, ctx, pooled = torch.randn(1, 16, 6, 8, generator=gen), torch.randn(1, 5, 64, generator=gen), torch.randn(1, 32, generator=gen)
    with torch.no_grad():
        ours = sm.unet(x, torch.tensor([0.62]), ctx, flux.flux_y(pooled, 3.5, 32))
    expected = reference_flux(patched, 2, x, 0.62, ctx, pooled, 3.5)
    unpatched = reference_flux(state, 2, x, 0.62, ctx, pooled, 3.5)
    assert (expected - unpatched).abs().max() > 1e-2
    assert torch.allclose(ours, expected, atol=2e-4), (ours - expected).abs().max()


def test_flux_key_forms_resolve_alike(loaded: dict[str, Any]) -> None:
    """The same q, k, v update as kohya on the fused qkv, as PEFT/AI-toolkit pairs on to_q/to_k/to_v (the
    alpha folded in), as `diffusion_model.` + ComfyUI names, and linear1_qkv on a single block's first rows."""
    ckpt, _ = loaded["flux"]
    model, kmap = ckpt.parts.unet, ckpt.parts.lora_map
    gen = torch.Generator().manual_seed(0)
    width = 256
    up, down = torch.randn(3 * width, 4, generator=gen), torch.randn(4, width, generator=gen)
    kohya: dict[str, Adapter] = {"lora_unet_double_blocks_0_img_attn_qkv": LoraPair(up, down, 8.0)}
    peft: dict[str, Adapter] = {f"transformer.transformer_blocks.0.attn.{n}": LoraPair(u * 2.0, down, None)
            for n, u in zip(("to_q", "to_k", "to_v"), up.chunk(3), strict=True)}
    generic: dict[str, Adapter] = {"diffusion_model.double_blocks.0.img_attn.qkv": LoraPair(up, down, 8.0)}
    results = [flow_lora.patched_weights(model, kmap, [(a, 1.0)])[0] for a in (kohya, peft, generic)]
    assert set(results[0]) == set(results[1]) == set(results[2]) == {
        f"transformer_blocks.0.attn.{n}.weight" for n in ("to_q", "to_k", "to_v")}
    for k in results[0]:
        assert torch.allclose(results[0][k], results[1][k], atol=1e-5)
        assert torch.equal(results[0][k], results[2][k])
    # ComfyUI's linear1_qkv: q, k, v of single block 0, proj_mlp untouched
    rows = torch.randn(3 * width, 2, generator=gen)
    qkv = flow_lora.patched_weights(
        model, kmap, [({"diffusion_model.single_blocks.0.linear1_qkv": LoraPair(rows, down[:2], None)}, 1.0)])[0]
    assert set(qkv) == {f"single_transformer_blocks.0.attn.{n}.weight" for n in ("to_q", "to_k", "to_v")}
    base = dict(model.named_parameters())["single_transformer_blocks.0.attn.to_v.weight"]
    assert torch.allclose(qkv["single_transformer_blocks.0.attn.to_v.weight"], base + rows[2 * width:] @ down[:2])


def test_several_loras_stack_with_their_strengths(loaded: dict[str, Any], tmp_path: Path) -> None:
    ckpt, path = loaded["zimage"]
    a, _ = _loras("zimage", ckpt, path, tmp_path, seed=1)
    b, _ = _loras("zimage", ckpt, path, tmp_path, seed=2)
    model, kmap = ckpt.parts.unet, ckpt.parts.lora_map
    both, _ = flow_lora.patched_weights(model, kmap, [(read_lora(a), 1.0), (read_lora(b), -0.5)])
    da, _ = flow_lora.deltas(model, kmap, [(read_lora(a), 1.0)])
    db, _ = flow_lora.deltas(model, kmap, [(read_lora(b), 1.0)])
    params = dict(model.named_parameters())
    for key in both:
        assert torch.allclose(both[key], params[key] + da[key] - 0.5 * db[key], atol=1e-6)


def test_fp8_linears_get_a_patched_copy_in_the_compute_dtype(tmp_path: Path) -> None:
    state = tiny_flux.random_tensors(tiny_flux.flux_shapes(), 0, torch.bfloat16)
    quant = tiny_flux.scaled_fp8(state)
    path = tmp_path / "fp8.safetensors"
    save_file(quant, str(path))
    cache = ModelCache(budget_bytes=2**30, device=CPU)
    ckpt = cache.unet_file(path)
    model: Any = ckpt.parts.unet
    kmap: Any = ckpt.parts.lora_map
    linear = model.get_submodule("transformer_blocks.0.attn.to_q")
    assert isinstance(linear, Fp8Linear)
    lora_path, _ = _loras("flux_fp8", ckpt, path, tmp_path)
    adapters = read_lora(lora_path)
    overrides, _ = flow_lora.patched_weights(model, kmap, [(adapters, 1.0)])
    delta, _ = flow_lora.deltas(model, kmap, [(adapters, 1.0)])
    key = "transformer_blocks.0.attn.to_q.weight"
    assert overrides[key].dtype == torch.float32  # the model's compute dtype on the CPU
    expected = linear.weight.float() * linear.scale.float() + delta[key]
    assert torch.equal(overrides[key], expected)
    assert torch.equal(overrides["transformer_blocks.0.attn.to_q.scale"], torch.ones_like(linear.scale))
    assert linear.weight.dtype == torch.float8_e4m3fn  # the cached base keeps fp8
    base = _model_out(cache, ckpt, [])
    assert (_model_out(cache, ckpt, [(lora_path, 1.0)]) - base).abs().max() > 1e-4


@pytest.mark.parametrize("family", ["zimage", "qwen_image"])
def test_a_lora_on_fp8_linears_gives_what_it_gives_on_their_upcast_weights(family: str, tmp_path: Path) -> None:
    state = load_file(str(_family_file(family, tmp_path / "bf16")))
    fp8, upcast = tmp_path / f"{family}_fp8.safetensors", tmp_path / f"{family}_upcast.safetensors"
    save_file(tiny_flux2.fp8(state), str(fp8))
    save_file({k: v.float() for k, v in tiny_flux2.fp8(state).items()}, str(upcast))
    cache = ModelCache(budget_bytes=2**30, device=CPU)
    ckpt, reference = cache.unet_file(fp8), cache.unet_file(upcast)
    assert any(isinstance(m, Fp8Linear) for m in ckpt.parts.unet.modules())  # type: ignore[union-attr]
    lora, _ = _loras(family, ckpt, fp8, tmp_path)
    patched = _model_out(cache, ckpt, [(lora, 1.0)])
    assert torch.equal(patched, _model_out(cache, reference, [(lora, 1.0)]))
    assert (patched - _model_out(cache, ckpt, [])).abs().max() > 1e-4


def test_loha_and_lokr_deltas() -> None:
    gen = torch.Generator().manual_seed(0)
    w1a, w1b, w2a, w2b = (torch.randn(s, generator=gen) for s in ((6, 2), (2, 4), (6, 2), (2, 4)))
    tensors = {"m.hada_w1_a": w1a, "m.hada_w1_b": w1b, "m.hada_w2_a": w2a, "m.hada_w2_b": w2b,
               "m.alpha": torch.tensor(1.0)}
    loha = adapters_of(tensors)["m"]
    assert isinstance(loha, LoHa) and loha.fits((6, 4))
    assert torch.allclose(loha.delta((6, 4)), (w1a @ w1b) * (w2a @ w2b) * 0.5)
    k1, k2a, k2b = torch.randn(2, 2, generator=gen), torch.randn(3, 2, generator=gen), torch.randn(2, 2, generator=gen)
    lokr = adapters_of({"n.lokr_w1": k1, "n.lokr_w2_a": k2a, "n.lokr_w2_b": k2b, "n.alpha": torch.tensor(4.0)})["n"]
    assert isinstance(lokr, LoKr) and lokr.fits((6, 4)) and not lokr.fits((4, 6))
    assert torch.allclose(lokr.delta((6, 4)), torch.kron(k1, k2a @ k2b) * 2.0)


def test_lora_loader_nodes_on_a_flow_model(tmp_path: Path, loaded: dict[str, Any], cache: ModelCache) -> None:
    from comfymesh.diffusion.models.cache import set_model_cache
    from comfymesh.diffusion.nodes import nodes
    from comfymesh.stage.node import NodeContext

    ckpt, path = loaded["sd3"]
    home = tmp_path / "home"
    (home / "models" / "diffusion_models").mkdir(parents=True)
    shutil.copy(path, home / "models" / "diffusion_models" / "m.safetensors")
    kohya, _ = _loras("sd3", ckpt, path, home / "models" / "loras")
    save_file({"lora_unet_nowhere.lora_up.weight": torch.zeros(4, 2),
               "lora_unet_nowhere.lora_down.weight": torch.zeros(2, 4)}, str(home / "models" / "loras" / "x.safetensors"))
    ctx = NodeContext(job_id="job", node_id="1", class_type="test", home=home)
    set_model_cache(cache)
    try:
        (model,) = nodes.impls["UNETLoader"](ctx, unet_name="m.safetensors", weight_dtype="default")
        (patched,) = nodes.impls["LoraLoaderModelOnly"](ctx, model=model, lora_name=kohya.name, strength_model=0.5)
        assert patched["loras"][-1][0] == kohya.name and patched["loras"][-1][2] == 0.5
        with pytest.raises(NodeInputError, match=r"x\.safetensors fits no layer"):
            nodes.impls["LoraLoaderModelOnly"](ctx, model=model, lora_name="x.safetensors", strength_model=1.0)
    finally:
        set_model_cache(None)


def test_jobs_side_by_side_see_only_their_own_weights(loaded: dict[str, Any], cache: ModelCache,
                                                       tmp_path: Path) -> None:
    """Two stage slots on one cached model, one with a LoRA, one without: each call sees its own weights."""
    ckpt, path = loaded["flux"]
    kohya, _ = _loras("flux", ckpt, path, tmp_path, seed=4)
    base, styled = _model_out(cache, ckpt, []), _model_out(cache, ckpt, [(kohya, 1.0)])
    results: dict[str, list[torch.Tensor]] = {"base": [], "styled": []}

    def work(kind: str, loras: list[tuple[Path, float]]) -> None:
        for _ in range(6):
            results[kind].append(_model_out(cache, ckpt, loras))

    threads = [threading.Thread(target=work, args=("base", [])),
               threading.Thread(target=work, args=("styled", [(kohya, 1.0)]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(out, base) for out in results["base"])
    assert all(torch.equal(out, styled) for out in results["styled"])


def test_gpu_patches_round_as_comfyui_in_fp16(loaded: dict[str, Any], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CUDA device ComfyUI patches in fp16 (lora_compute_dtype): W cast to fp16, each LoRA's s·ΔW added in
    fp16 in stack order, then W's dtype. The same path, forced on the CPU, against that computed here."""
    assert flow_lora.lora_dtype(torch.device("cuda")) == torch.float16
    assert flow_lora.lora_dtype(CPU) == torch.float32
    monkeypatch.setattr(flow_lora, "lora_dtype", lambda device: torch.float16)
    ckpt, path = loaded["qwen_image"]
    a, _ = _loras("qwen_image", ckpt, path, tmp_path, seed=5)
    b, _ = _loras("qwen_image", ckpt, path, tmp_path, seed=6)
    model, kmap = ckpt.parts.unet, ckpt.parts.lora_map
    out, _ = flow_lora.patched_weights(model, kmap, [(read_lora(a), 0.9), (read_lora(b), -1.3)])
    da, _ = flow_lora.deltas(model, kmap, [(read_lora(a), 0.9)])
    db, _ = flow_lora.deltas(model, kmap, [(read_lora(b), -1.3)])
    params = dict(model.named_parameters())
    for key in out:
        temp = params[key].half()
        temp += da[key].half()
        temp += db[key].half()
        assert torch.equal(out[key], temp.float())
    key = next(iter(out))
    single = (params[key] + da[key] + db[key]).float()
    assert not torch.equal(out[key], single)  # the fp16 roundings are there


def test_chroma_approximator_takes_comfyui_names_only(loaded: dict[str, Any]) -> None:
    """ComfyUI 0.8.0 reads Chroma LoRAs with FLUX's diffusers map, which has no name for the approximator: a
    diffusers-named key there is left unused ("lora key not loaded"); the ComfyUI-named one applies."""
    ckpt, _ = loaded["chroma"]
    model, kmap = ckpt.parts.unet, ckpt.parts.lora_map
    gen = torch.Generator().manual_seed(2)
    rows, cols = dict(model.named_parameters())["distilled_guidance_layer.in_proj.weight"].shape
    pair = LoraPair(torch.randn(rows, 2, generator=gen), torch.randn(2, cols, generator=gen), None)
    adapters: dict[str, Adapter] = {"transformer.distilled_guidance_layer.in_proj": pair,
                                    "lora_unet_distilled_guidance_layer_in_proj": pair}
    assert flow_lora.fitting(model, kmap, adapters) == {"lora_unet_distilled_guidance_layer_in_proj"}


def test_text_encoder_names_follow_comfyui() -> None:
    """ComfyUI's model_lora_keys_clip: CLIP-L lora_te_/lora_te1_, CLIP-G lora_te2_ beside it, T5 lora_te<N>_
    after N−1 CLIPs (FLUX's L + T5: lora_te2_ and lora_te3_), diffusers text_encoder(_2). and the generic form."""
    t5 = torch.nn.Module()
    t5.q = torch.nn.Linear(4, 4, bias=False)
    assert set(flow_lora.text_encoder_names("t5", t5, ["l", "t5"]).names or {}) == {
        "lora_te2_q", "lora_te3_q", "text_encoders.t5xxl.transformer.q"}
    assert set(flow_lora.text_encoder_names("t5", t5, ["l", "g", "t5"]).names or {}) == {
        "lora_te3_q", "text_encoders.t5xxl.transformer.q"}
    assert set(flow_lora.text_encoder_names("t5", t5, ["t5"]).names or {}) == {
        "lora_te1_q", "text_encoders.t5xxl.transformer.q"}
    clip = torch.nn.Module()
    clip.encoder = torch.nn.Linear(4, 4, bias=False)
    assert set(flow_lora.text_encoder_names("g", clip, ["l", "g"]).names or {}) == {
        "lora_te2_text_model_encoder", "text_encoder_2.text_model.encoder",
        "text_encoders.clip_g.transformer.text_model.encoder"}
    assert set(flow_lora.text_encoder_names("l", clip, ["l", "t5"]).names or {}) == {
        "lora_te_text_model_encoder", "lora_te1_text_model_encoder", "text_encoder.text_model.encoder",
        "text_encoders.clip_l.transformer.text_model.encoder"}


def test_lora_loader_patches_flux_text_encoders(tmp_path: Path, cache: ModelCache) -> None:
    """LoraLoader's clip part on FLUX's CLIP-L (lora_te1_) and T5 (lora_te3_): CLIPTextEncode and
    CLIPTextEncodeFlux see the patched encoders at strength_clip 1, the base ones at 0; the cached encoders
    stay as loaded."""
    from comfymesh.diffusion.models.cache import set_model_cache
    from comfymesh.diffusion.nodes import nodes
    from comfymesh.stage.node import NodeContext

    models = tmp_path / "models"
    files = tiny_flux.make_tiny_flux(models, dtype=torch.float32)
    gen = torch.Generator().manual_seed(9)
    lora: dict[str, torch.Tensor] = {}
    for name, rows, cols in (("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", 32, 32),
                             ("lora_te1_text_model_encoder_layers_1_mlp_fc2", 32, 128),
                             ("lora_te3_encoder_block_0_layer_0_SelfAttention_q", 64, 64)):
        lora[f"{name}.lora_up.weight"] = torch.randn(rows, 2, generator=gen)
        lora[f"{name}.lora_down.weight"] = torch.randn(2, cols, generator=gen)
        lora[f"{name}.alpha"] = torch.tensor(4.0)
    tiny_lora.write(models / "loras" / "te.safetensors", lora)
    ctx = NodeContext(job_id="job", node_id="1", class_type="test", home=tmp_path)
    set_model_cache(cache)
    try:
        (model,) = nodes.impls["UNETLoader"](ctx, unet_name=files["diffusion_model"].name, weight_dtype="default")
        (clip,) = nodes.impls["DualCLIPLoader"](ctx, clip_name1=files["clip_l"].name, clip_name2=files["t5"].name,
                                                type="flux", device="default")
        loaded = cache.text_encoder_files([files["clip_l"], files["t5"]], "flux")
        t5_q = loaded.parts.clips["t5"].get_parameter("encoder.block.0.layer.0.SelfAttention.q.weight").clone()
        _, lclip = nodes.impls["LoraLoader"](ctx, model=model, clip=clip, lora_name="te.safetensors",
                                             strength_model=1.0, strength_clip=1.0)
        _, zclip = nodes.impls["LoraLoader"](ctx, model=model, clip=clip, lora_name="te.safetensors",
                                             strength_model=1.0, strength_clip=0.0)
        (base,) = nodes.impls["CLIPTextEncode"](ctx, text="a cat", clip=clip)
        (patched,) = nodes.impls["CLIPTextEncode"](ctx, text="a cat", clip=lclip)
        (zero,) = nodes.impls["CLIPTextEncode"](ctx, text="a cat", clip=zclip)
        assert torch.equal(torch.as_tensor(base[0][0]), torch.as_tensor(zero[0][0]))
        assert not torch.allclose(torch.as_tensor(base[0][0]), torch.as_tensor(patched[0][0]))  # T5 context
        pooled = (torch.as_tensor(base[0][1]["pooled_output"]), torch.as_tensor(patched[0][1]["pooled_output"]))
        assert not torch.allclose(*pooled)  # CLIP-L's pooled output
        (flux_base,) = nodes.impls["CLIPTextEncodeFlux"](ctx, clip=clip, clip_l="a cat", t5xxl="a cat", guidance=3.5)
        (flux_patched,) = nodes.impls["CLIPTextEncodeFlux"](ctx, clip=lclip, clip_l="a cat", t5xxl="a cat",
                                                           guidance=3.5)
        assert not torch.allclose(torch.as_tensor(flux_base[0][0]), torch.as_tensor(flux_patched[0][0]))
        assert torch.equal(torch.as_tensor(flux_patched[0][0]), torch.as_tensor(patched[0][0]))
        # the patched T5 weight is W + s·up·down·alpha/rank; the cached one is untouched
        name = "lora_te3_encoder_block_0_layer_0_SelfAttention_q"
        patches = cache._patches(loaded, "clip", [(models / "loras" / "te.safetensors", 1.0)])
        expected = t5_q + (lora[f"{name}.lora_up.weight"] @ lora[f"{name}.lora_down.weight"]) * 2.0
        assert torch.allclose(patches["t5"]["encoder.block.0.layer.0.SelfAttention.q.weight"], expected, atol=1e-6)
        assert torch.equal(loaded.parts.clips["t5"].get_parameter("encoder.block.0.layer.0.SelfAttention.q.weight"),
                           t5_q)
    finally:
        set_model_cache(None)


def test_patches_worked_in_chunks_equal_one_pass(loaded: dict[str, Any], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A few weights at a time (full-size models): the same tensors as in one pass, for a stack mixing
    file-named (kohya) and module-named (PEFT) keys."""
    ckpt, path = loaded["flux"]
    a, _ = _loras("flux", ckpt, path, tmp_path, seed=7)
    _, b = _loras("flux", ckpt, path, tmp_path, seed=8)
    model, kmap = ckpt.parts.unet, ckpt.parts.lora_map
    stack = [(read_lora(a), 0.7), (read_lora(b), 1.1)]
    whole, used = flow_lora.patched_weights(model, kmap, stack)
    monkeypatch.setattr(flow_lora, "_CHUNK", 2)
    chunked, used_chunked = flow_lora.patched_weights(model, kmap, stack)
    assert used == used_chunked and set(whole) == set(chunked)
    assert all(torch.equal(whole[k], chunked[k]) for k in whole)
