"""ComfyUI's mixed-precision files (`*_fp8mixed`: fp8 block linears with a `weight_scale` and a `comfy_quant`
descriptor each, the other layers bf16) load with their fp8 linears kept fp8 (Fp8Linear) and computing each weight
times its scale, the bf16 layers as stored; the bookkeeping keys never reach a LoRA key map; a quantised format
other than fp8 is refused naming the file, the layer, the format, whether ComfyUI 0.8.0 loads it, and what to use
instead. Qwen-Image, Z-Image and FLUX.2 Dev's Mistral keep fp8 in memory too, computing what the weights upcast
would, and take the bytes the model cache's estimate from the file says (the refusal before loading relies on it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.families import flux, qwen_image, zimage
from comfymesh.diffusion.memory.fit import resident_bytes
from comfymesh.diffusion.models.cache import ModelCache
from comfymesh.diffusion.models.flow_lora import key_map
from comfymesh.diffusion.models.fp8_weights import Fp8Linear, split_scales
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.models.tiny_flux import flux_shapes, fp8_mixed, random_tensors
from comfymesh.diffusion.models.tiny_flux2 import fp8, mistral_file_tensors
from comfymesh.diffusion.models.tiny_qwen_image import qwen_image_shapes, tensors
from comfymesh.diffusion.models.tiny_zimage import zimage_shapes
from comfymesh.diffusion.text.mistral_text import load_mistral_encoder

CPU = torch.device("cpu")


def _expected(stored: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    """What ComfyUI computes with for a stored weight: fp8 times its scale, anything else as stored."""
    layer = key[: -len(".weight")]
    if f"{layer}.comfy_quant" in stored:
        return stored[key].float() * stored[f"{layer}.weight_scale"].float()
    return stored[key].float()


def _unet(path: Path) -> torch.nn.Module:
    module: torch.nn.Module = ModelCache(budget_bytes=2**30, device=CPU).unet_file(path).unet()[0]
    return module


def test_the_tiny_writer_quantises_block_linears_only() -> None:
    state = random_tensors(flux_shapes(width=128, head_dim=64), 0, torch.bfloat16)
    stored = fp8_mixed(state)
    quantised = [k for k in stored if k.endswith(".comfy_quant")]
    assert quantised and all(k.startswith(("double_blocks.", "single_blocks.")) for k in quantised)
    descriptor = json.loads(bytes(stored[quantised[0]].tolist()))
    assert descriptor == {"format": "float8_e4m3fn"}
    layer = quantised[0][: -len(".comfy_quant")]
    assert stored[layer + ".weight"].dtype == torch.float8_e4m3fn and stored[layer + ".weight_scale"].shape == ()
    assert stored["img_in.weight"].dtype == torch.bfloat16  # outside the blocks: kept as it was
    weights, scales = split_scales(stored, "flux1-dev-fp8mixed.safetensors")
    assert set(weights) == set(state) and set(scales) == {k[: -len(".comfy_quant")] + ".weight" for k in quantised}


def test_a_flux_fp8mixed_file_keeps_its_block_linears_in_fp8_with_their_scales(tmp_path: Path) -> None:
    path = tmp_path / "flux1-dev-fp8mixed.safetensors"
    stored = fp8_mixed(random_tensors(flux_shapes(width=128, head_dim=64), 0, torch.bfloat16))
    save_file(stored, str(path))
    model = _unet(path)
    fp8 = {name: m for name, m in model.named_modules() if isinstance(m, Fp8Linear)}
    assert fp8 and all(m.weight.dtype == torch.float8_e4m3fn for m in fp8.values())
    # diffusers' single-block attention: the scale of ComfyUI's fused linear1 is each converted piece's
    q = model.single_transformer_blocks[0].attn.to_q
    assert isinstance(q, Fp8Linear)
    assert torch.equal(q.scale.reshape(-1), stored["single_blocks.0.linear1.weight_scale"].float().expand(q.out_features))
    # a layer outside the blocks is an ordinary linear holding the bf16 weight
    assert not isinstance(model.x_embedder, Fp8Linear)
    assert torch.equal(model.x_embedder.weight.float(), stored["img_in.weight"].float())
    # LoRAs map onto the weights only: no scale or descriptor key is a LoRA target
    names = key_map(TensorSource(path), "").file_shapes
    assert not any(n.endswith((".weight_scale", ".comfy_quant")) for n in names)
    assert "double_blocks.0.img_attn.qkv.weight" in names


def test_a_qwen_image_fp8mixed_file_keeps_its_block_linears_in_fp8_with_their_scales(tmp_path: Path) -> None:
    state = tensors(qwen_image_shapes(variant="2511"), 0, torch.bfloat16)
    stored = fp8_mixed(state)
    mixed, plain = tmp_path / "qwen_image_edit_2511_fp8mixed.safetensors", tmp_path / "qwen_image_edit_2511.safetensors"
    save_file(stored, str(mixed))
    save_file(state, str(plain))
    model, bf16 = _unet(mixed), _unet(plain)
    q = model.transformer_blocks[0].attn.to_q
    assert isinstance(q, Fp8Linear) and q.weight.dtype == torch.float8_e4m3fn
    assert torch.equal(q.scale.reshape(-1), stored["transformer_blocks.0.attn.to_q.weight_scale"].float().expand(
        q.out_features))
    key = "transformer_blocks.0.attn.to_q.weight"
    dequantised = q.weight.float() * q.scale
    assert torch.equal(dequantised, _expected(stored, key))
    assert not torch.equal(dequantised, bf16.state_dict()[key].float())  # really quantised: fp8 rounding moved it
    torch.testing.assert_close(dequantised, state[key].float(), rtol=0.07, atol=1e-3)
    assert not isinstance(model.img_in, Fp8Linear)  # bf16 outside the blocks: as stored
    assert torch.equal(model.img_in.weight, bf16.img_in.weight)


def _fp8_linears(state: dict[str, torch.Tensor], blocks: str) -> dict[str, torch.Tensor]:
    """The block linears' weights in fp8 e4m3fn without scales (ComfyUI's fp8 text encoder files quantise those
    only: the embedding stays bf16), the rest as they are."""
    return {k: v.to(torch.float8_e4m3fn) if k.startswith(blocks) and k.endswith(".weight") and v.ndim == 2 else v
            for k, v in state.items()}


FP8_FILES = {
    "qwen_image_fp8_e4m3fn": lambda: fp8(tensors(qwen_image_shapes(), 0, torch.bfloat16)),
    "qwen_image_edit_2511_fp8mixed": lambda: fp8_mixed(tensors(qwen_image_shapes(variant="2511"), 1, torch.bfloat16)),
    "z_image_turbo_fp8_e4m3fn": lambda: fp8(tensors(zimage_shapes(), 2, torch.bfloat16)),
    "z_image_turbo_fp8mixed": lambda: fp8_mixed(tensors(zimage_shapes(), 3, torch.bfloat16)),
    "mistral_3_small_flux2_fp8": lambda: _fp8_linears(mistral_file_tensors(4, torch.bfloat16, 30), "model.layers."),
}
BLOCK = {"qwen": "transformer_blocks.0", "z_image": "layers.0", "mistral": "model.layers.0"}


@pytest.mark.parametrize("name", FP8_FILES)
def test_fp8_linears_stay_fp8_and_take_the_bytes_the_estimate_says(tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.safetensors"
    save_file(FP8_FILES[name](), str(path))
    cache = ModelCache(budget_bytes=2**30, device=CPU)
    if name.startswith("mistral"):
        loaded = cache.text_encoder_files([path], "flux2")
        model = loaded.parts.clips["mistral"]
    else:
        loaded = cache.unet_file(path)
        model = loaded.unet()[0]
    block = model.get_submodule(next(v for k, v in BLOCK.items() if name.startswith(k)))
    linears = [m for m in block.modules() if isinstance(m, (torch.nn.Linear, Fp8Linear))]
    assert len(linears) >= 7 and all(isinstance(m, Fp8Linear) for m in linears)
    assert all(m.weight.dtype == torch.float8_e4m3fn for m in linears)
    # float32 on the CPU: upcast at load, the model would take about 4× the estimate
    assert loaded.nbytes == pytest.approx(resident_bytes([path], torch.float32), rel=0.01)


def _dequantised(path: Path, tmp_path: Path) -> Path:
    """The file's weights upcast to float32 (times any scale), the bookkeeping keys gone: what upcasting at load
    computed with."""
    weights, scales = split_scales(TensorSource(path).with_prefix(""), path.name)
    out = tmp_path / f"dequantised_{path.name}"
    save_file({k: v.float() * scales.get(k, 1.0) if v.is_floating_point() else v for k, v in weights.items()},
              str(out))
    return out


def _aligned(model: torch.nn.Module) -> torch.nn.Module:
    """The model with its weights copied out of the file's memory map: a float32 file's tensors are used where
    they lie, at offsets that need not be 64-byte aligned, and the CPU's BLAS may round a product of unaligned
    operands differently (seen with AVX2 on a one-row matmul: 3.6e-7). The upcast weights are fresh, aligned
    allocations; the comparison is of the numerics, not of where the bytes sit."""
    for param in model.parameters():
        param.data = param.data.clone()
    return model


@pytest.mark.parametrize("name", ["qwen_image_fp8_e4m3fn", "z_image_turbo_fp8_e4m3fn", "z_image_turbo_fp8mixed"])
def test_fp8_diffusion_models_compute_what_their_weights_upcast_compute(tmp_path: Path, name: str) -> None:
    """In float32 an fp8 weight upcast per call is the upcast weight: the outputs are equal. Z-Image's timestep
    features are cast to the compute dtype, not to its first timestep layer's fp8."""
    path = tmp_path / f"{name}.safetensors"
    save_file(FP8_FILES[name](), str(path))
    qwen = name.startswith("qwen")
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    ctx = torch.randn(1, 5, 32 if qwen else 64, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.6])
    outs = []
    for model in (_unet(path), _aligned(_unet(_dequantised(path, tmp_path)))):
        call = qwen_image.qwen_image_fn(model) if qwen else zimage.zimage_fn(model)
        with torch.no_grad():
            outs.append(call(x, t, ctx, None))
    assert torch.equal(outs[0], outs[1])


def test_the_fp8_mistral_encodes_what_its_weights_upcast_encode(tmp_path: Path) -> None:
    path = tmp_path / "mistral_3_small_flux2_fp8.safetensors"
    save_file(FP8_FILES[path.stem](), str(path))
    fp8_encoder = load_mistral_encoder(TensorSource(path), CPU)
    upcast = load_mistral_encoder(TensorSource(_dequantised(path, tmp_path)), CPU)
    assert isinstance(fp8_encoder.model.norm, torch.nn.Identity)  # the pruned form's, as before
    assert torch.equal(fp8_encoder.encode("a red fox"), upcast.encode("a red fox"))


def _descriptor(spec: dict[str, object]) -> torch.Tensor:
    return torch.tensor(list(json.dumps(spec).encode()), dtype=torch.uint8)


# as ComfyUI after 0.8.0 writes an int8 ConvRot layer: int8 rows, a float32 scale per row, this descriptor
INT8_CONVROT = {"format": "int8_tensorwise", "convrot": True, "convrot_groupsize": 256}


def test_a_format_other_than_fp8_is_refused_by_name(tmp_path: Path) -> None:
    state = random_tensors(flux_shapes(width=128, head_dim=64), 0, torch.bfloat16)
    key = "double_blocks.0.img_attn.qkv"
    state[key + ".weight"] = torch.zeros(state[key + ".weight"].shape, dtype=torch.int8)
    state[key + ".weight_scale"] = torch.ones(state[key + ".weight"].shape[0], 1)
    state[key + ".comfy_quant"] = _descriptor({**INT8_CONVROT, "per_row": True})
    path = tmp_path / "flux1-dev-int8-convrot.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelError, match=r"^flux1-dev-int8-convrot\.safetensors: double_blocks\.0\.img_attn\.qkv is "
                       r"quantised as ComfyUI's 'int8_tensorwise' with ConvRot rotation \(Hadamard groups of 256\), "
                       r"a format ComfyUI 0\.8\.0, .* does not load either .*bf16, fp8 or fp8mixed file$"):
        _unet(path)
    assert flux.parse_flux(TensorSource(path)) is not None  # recognised as FLUX: refused for its format only


def test_the_z_image_turbo_int8_template_file_is_refused_naming_file_format_and_what_to_use(tmp_path: Path) -> None:
    """image_z_image_turbo_int8's diffusion model: Z-Image's block linears in the int8 ConvRot form."""
    stored: dict[str, torch.Tensor] = {}
    for k, v in tensors(zimage_shapes(), 0, torch.bfloat16).items():
        if k.startswith("layers.") and k.endswith(".weight") and v.ndim == 2:
            layer = k[: -len(".weight")]
            stored[k] = torch.zeros(v.shape, dtype=torch.int8)
            stored[layer + ".weight_scale"] = torch.ones(v.shape[0], 1)
            stored[layer + ".comfy_quant"] = _descriptor(INT8_CONVROT)
        else:
            stored[k] = v
    path = tmp_path / "z_image_turbo_int8_convrot.safetensors"
    save_file(stored, str(path))
    with pytest.raises(ModelError) as refused:
        _unet(path)
    message = str(refused.value)
    assert message.startswith("z_image_turbo_int8_convrot.safetensors: layers.0.")
    assert "'int8_tensorwise' with ConvRot rotation (Hadamard groups of 256)" in message
    assert "ComfyUI 0.8.0" in message and message.endswith("use the same model's bf16, fp8 or fp8mixed file")


@pytest.mark.parametrize(("spec", "says"), [
    ({"format": "nvfp4"}, "'nvfp4', which ComfyUI 0.8.0 computes with comfy-kitchen's kernels and this stage "
                          "does not (it reads float8_e4m3fn and float8_e5m2)"),
    ({"format": "mxfp8"}, "'mxfp8', a format ComfyUI 0.8.0, the version this mesh matches, does not load either "
                          "(it knows float8_e4m3fn, float8_e5m2, nvfp4)"),
])
def test_the_refusal_says_whether_comfyui_080_loads_the_format(spec: dict[str, object], says: str) -> None:
    state = {"blocks.0.linear.weight": torch.zeros(4, 4, dtype=torch.uint8),
             "blocks.0.linear.comfy_quant": _descriptor(spec)}
    with pytest.raises(ModelError) as refused:
        split_scales(state, "model.safetensors")
    assert str(refused.value) == (f"model.safetensors: blocks.0.linear is quantised as ComfyUI's {says}: use the "
                                  "same model's bf16, fp8 or fp8mixed file")
