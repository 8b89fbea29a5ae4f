"""The fp8 matmul mode: when it is chosen (Ada/Hopper only, opt-in) and, through torch._scaled_mm on the CPU, its
numerics against the upcast bf16 path on per-tensor and per-row scaled weights."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfymesh.config.fast_path import FastPathSettings
from comfymesh.diffusion.memory import fp8_matmul
from comfymesh.diffusion.memory.fp8_matmul import fp8_kernel
from comfymesh.diffusion.models import cache as cache_module
from comfymesh.diffusion.models import tiny_flux
from comfymesh.diffusion.models.cache import ModelCache
from comfymesh.diffusion.models.fp8_weights import Fp8Linear, set_fp8_kernel

CUDA = torch.device("cuda:0")


def test_the_kernel_is_scaled_mm_only_when_asked_for_on_fp8_tensor_cores(caplog: pytest.LogCaptureFixture) -> None:
    fp8_matmul._warned.clear()
    assert fp8_kernel(False, CUDA, (9, 0)) == "upcast"
    assert fp8_kernel(True, CUDA, (9, 0)) == "scaled_mm"  # Hopper
    assert fp8_kernel(True, CUDA, (8, 9)) == "scaled_mm"  # Ada
    with caplog.at_level(logging.WARNING, logger="comfymesh.diffusion.memory.fp8_matmul"):
        assert fp8_kernel(True, CUDA, (8, 0)) == "upcast"  # A100
        assert fp8_kernel(True, CUDA, (8, 6)) == "upcast"
        assert fp8_kernel(True, torch.device("cpu"), None) == "upcast"
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2  # once per device
    assert "compute capability (8, 0)" in said[0] and "not a CUDA device" in said[1]


def _layer(rows: torch.Tensor, seed: int = 0, out: int = 64, inp: int = 128) -> tuple[Fp8Linear, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(out, inp, generator=g) * 0.05
    weight = (real / rows[:, None]).to(torch.float8_e4m3fn)
    return Fp8Linear(weight, rows, torch.randn(out, generator=g) * 0.1), torch.randn(3, 7, inp, generator=g)


def _psnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.abs().max() ** 2 / (out - ref).pow(2).mean()))


@pytest.mark.parametrize("rows", [torch.full((64,), 0.004), torch.linspace(0.002, 0.006, 64)],
                         ids=["per-tensor", "per-row"])
def test_scaled_mm_is_close_to_the_bf16_path(rows: torch.Tensor) -> None:
    layer, x = _layer(rows)
    x = x.bfloat16()
    upcast = layer(x).float()
    assert set_fp8_kernel(layer, "scaled_mm") == 1
    assert (layer.tensor_scale is None) == (rows.unique().numel() > 1)
    fp8 = layer(x).float()
    # only the input's cast to e4m3 differs (3 mantissa bits): measured 41.8 dB PSNR, 0.066 max error here
    assert _psnr(upcast, fp8) > 35
    assert (fp8 - upcast).abs().max() < 0.1 * upcast.abs().max()
    exact_input = x.float().clamp(-448, 448).to(torch.float8_e4m3fn).bfloat16()
    assert _psnr(layer(exact_input).float(), _reference(layer, exact_input)) > 45  # same maths on exact inputs
    set_fp8_kernel(layer, "upcast")
    assert torch.equal(layer(x).float(), upcast)


def _reference(layer: Fp8Linear, x: torch.Tensor) -> torch.Tensor:
    w = layer.weight.float() * layer.scale
    assert layer.bias is not None
    return torch.nn.functional.linear(x.float(), w, layer.bias.float())


def test_layers_scaled_mm_cannot_take_stay_upcast() -> None:
    odd, _ = _layer(torch.full((24,), 0.01), out=24, inp=40)  # not 16-aligned
    e5m2 = Fp8Linear(torch.randn(32, 32).to(torch.float8_e5m2), torch.ones(32), None)  # ComfyUI: e4m3 only
    model = torch.nn.Sequential(odd, e5m2)
    assert set_fp8_kernel(model, "scaled_mm") == 0
    assert odd.kernel == e5m2.kernel == "upcast"


def test_unet_loaders_fast_fp8_dtype_asks_for_fp8_matmuls_for_its_model_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "flux.safetensors"
    state = tiny_flux.random_tensors(tiny_flux.flux_shapes(guidance=True), 3, torch.bfloat16)
    save_file(tiny_flux.scaled_fp8(state), str(path))  # a scaled-fp8 file: its block linears load as Fp8Linears
    cache = ModelCache(budget_bytes=2**30, device=torch.device("cpu"), fast=FastPathSettings(fast_path=False))
    fp8_matmul._warned.clear()
    with caplog.at_level(logging.WARNING, logger="comfymesh.diffusion.memory.fp8_matmul"):
        fast, _ = cache.unet_file(path, "fp8_e4m3fn_fast").unet()
        plain, _ = cache.unet_file(path, "fp8_e4m3fn").unet()
    # the CPU has no fp8 tensor cores: ComfyUI's fallback, the upcast, said once; the two loads are two models
    assert fast is not plain and "not a CUDA device" in caplog.text
    kernels = {m.kernel for m in fast.modules() if isinstance(m, Fp8Linear)}
    assert kernels == {"upcast"}
    # on a Hopper card (its capability stands in: no GPU here) the fast dtype alone multiplies in fp8
    monkeypatch.setattr(cache_module, "device_capability", lambda _device: (9, 0))
    cache.device = CUDA
    assert cache.unet_kernel("fp8_e4m3fn_fast") == "scaled_mm"
    assert cache.unet_kernel("fp8_e4m3fn") == cache.unet_kernel("default") == "upcast"
