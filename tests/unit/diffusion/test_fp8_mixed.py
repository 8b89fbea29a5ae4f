"""ComfyUI's mixed-precision files (`*_fp8mixed`: fp8 block linears with a `weight_scale` and a `comfy_quant`
descriptor each, the other layers bf16) load for the families that keep fp8 in memory (FLUX: Fp8Linear) and for
those that upcast at load (Qwen-Image), with each quantised weight times its scale and the bf16 layers as stored;
the bookkeeping keys never reach a LoRA key map; a quantised format other than fp8 is refused naming the
file, the layer, the format, whether ComfyUI 0.8.0 loads it, and what to use instead."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.families import flux
from comfymesh.diffusion.models.cache import ModelCache
from comfymesh.diffusion.models.flow_lora import key_map
from comfymesh.diffusion.models.fp8_weights import Fp8Linear, split_scales
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.models.tiny_flux import flux_shapes, fp8_mixed, random_tensors
from comfymesh.diffusion.models.tiny_qwen_image import qwen_image_shapes, tensors
from comfymesh.diffusion.models.tiny_zimage import zimage_shapes

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


def test_a_qwen_image_fp8mixed_file_computes_each_weight_times_its_scale(tmp_path: Path) -> None:
    state = tensors(qwen_image_shapes(variant="2511"), 0, torch.bfloat16)
    stored = fp8_mixed(state)
    mixed, plain = tmp_path / "qwen_image_edit_2511_fp8mixed.safetensors", tmp_path / "qwen_image_edit_2511.safetensors"
    save_file(stored, str(mixed))
    save_file(state, str(plain))
    got, bf16 = _unet(mixed).state_dict(), _unet(plain).state_dict()
    assert set(got) == set(bf16)
    q = "transformer_blocks.0.attn.to_q.weight"
    assert torch.equal(got[q].float(), _expected(stored, q).to(got[q].dtype).float())
    assert not torch.equal(got[q], bf16[q])  # really quantised: fp8 rounding moved it
    torch.testing.assert_close(got[q].float(), bf16[q].float(), rtol=0.07, atol=1e-3)
    assert torch.equal(got["img_in.weight"], bf16["img_in.weight"])  # bf16 outside the blocks: as stored


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
