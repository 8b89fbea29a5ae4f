"""Block-wise offload (issue 16): the plan says which blocks stream under a budget, and the streamed forward —
the copy machinery running on the CPU, streams as no-ops — equals the resident one bit for bit on tiny FLUX
(scaled fp8) and Qwen-Image models."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfymesh.diffusion.families import flux, qwen_image
from comfymesh.diffusion.memory import offload_plan
from comfymesh.diffusion.memory.fit import tensor_bytes
from comfymesh.diffusion.memory.streaming import offload
from comfymesh.diffusion.models.fp8_weights import Fp8Linear, set_fp8_kernel
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.models.tiny_flux import flux_shapes, random_tensors, scaled_fp8
from comfymesh.diffusion.models.tiny_qwen_image import qwen_image_shapes, tensors
from tests.flux_call import flux_call

CPU = torch.device("cpu")


def test_plan_keeps_the_first_blocks_resident_and_streams_the_rest() -> None:
    blocks = {f"b.{i}": 10 for i in range(6)}
    everything = offload_plan.plan("m", blocks, other_bytes=5, budget=65)
    assert everything.streamed == () and everything.resident_bytes == 65
    tight = offload_plan.plan("m", blocks, other_bytes=5, budget=50)
    # 5 non-block + a 20-byte window of two streamed blocks leaves room for 2 resident blocks
    assert tight.resident == ("b.0", "b.1") and tight.streamed == ("b.2", "b.3", "b.4", "b.5")
    assert tight.resident_bytes == 25 and tight.streamed_bytes == 40 and tight.window_bytes == 20
    assert tight.device_bytes == 45 <= 50
    assert "4 blocks streamed" in tight.describe() and "expected step time" in tight.describe()
    assert offload_plan.minimum_bytes(blocks, 5) == 25
    smallest = offload_plan.plan("m", blocks, other_bytes=5, budget=25)
    assert smallest.resident == () and len(smallest.streamed) == 6 and smallest.device_bytes == 25


def test_file_blocks_group_keys_as_the_built_model_groups_modules(tmp_path: Path) -> None:
    state = random_tensors(flux_shapes(width=128, head_dim=64, depth=2, depth_single=3), 0, torch.bfloat16)
    save_file(state, str(tmp_path / "f.safetensors"))
    blocks, other = offload_plan.file_blocks(tensor_bytes([tmp_path / "f.safetensors"], torch.float32))
    assert list(blocks) == [
        "double_blocks.0", "double_blocks.1", "single_blocks.0", "single_blocks.1", "single_blocks.2"]
    model = _flux(tmp_path, torch.bfloat16, fp8=False)  # float32 on the CPU
    built_blocks, built_other = offload_plan.module_blocks(model)
    assert len(built_blocks) == 5
    assert sum(built_blocks.values()) + built_other == sum(blocks.values()) + other


def _flux(tmp_path: Path, dtype: torch.dtype, fp8: bool) -> torch.nn.Module:
    state = random_tensors(flux_shapes(width=128, head_dim=64, depth=2, depth_single=3), 0, dtype)
    path = tmp_path / ("flux_fp8.safetensors" if fp8 else "flux.safetensors")
    save_file(scaled_fp8(state) if fp8 else state, str(path))
    src = TensorSource(path)
    layout = flux.FAMILY.recognise(src)
    return flux.FAMILY.build(src, layout, CPU, None).module


def _streamed_equals_resident(model: torch.nn.Module, call: object, budget_blocks: int,
                              caplog: pytest.LogCaptureFixture) -> None:
    blocks, other = offload_plan.module_blocks(model)
    window = sum(sorted(blocks.values(), reverse=True)[:2])
    budget = other + window + sum(list(blocks.values())[:budget_blocks])
    plan = offload_plan.plan("tiny", blocks, other, budget)
    assert len(plan.resident) == budget_blocks and plan.streamed
    # the reference runs on allocator-aligned copies too: a model loaded on the CPU may hold tensors of the
    # memory-mapped file at any alignment, and CPU matmul kernels round differently by alignment
    resident = call(copy.deepcopy(model))  # type: ignore[operator]
    streamed_model = copy.deepcopy(model)
    with caplog.at_level(logging.INFO, logger="comfymesh.diffusion.memory.streaming"):
        streamer = offload(streamed_model, plan, CPU)
    assert streamer is not None and "blocks streamed from pinned host memory" in caplog.text
    blocks_held = {name: [p.data_ptr() for p in streamed_model.get_submodule(name).parameters()]
                   for name in plan.streamed}
    seen: list[int] = []  # the weight a streamed block computes with: its copy, not the host tensor
    last = streamed_model.get_submodule(plan.streamed[-1])
    last.register_forward_pre_hook(lambda m, _a: seen.append(next(m.parameters()).data_ptr()))
    first = call(streamed_model)  # type: ignore[operator]
    again = call(streamed_model)  # type: ignore[operator]
    assert torch.equal(first, resident) and torch.equal(again, resident)
    assert seen and blocks_held[plan.streamed[-1]][0] not in seen
    # each call copied every streamed block once, and left the blocks holding their host tensors again
    assert streamer.copies == 2 * len(plan.streamed) and not streamer.inflight
    assert blocks_held == {name: [p.data_ptr() for p in streamed_model.get_submodule(name).parameters()]
                           for name in plan.streamed}
    streamer.remove()
    assert torch.equal(call(streamed_model), resident)  # type: ignore[operator]
    assert streamer.copies == 2 * len(plan.streamed)


@pytest.mark.parametrize("fp8", [False, True])
def test_streamed_flux_equals_resident_bit_for_bit(tmp_path: Path, fp8: bool,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    model = _flux(tmp_path, torch.float32, fp8)
    _streamed_equals_resident(model, flux_call(model), budget_blocks=1, caplog=caplog)


def test_streamed_qwen_image_equals_resident_bit_for_bit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    save_file(tensors(qwen_image_shapes(layers=4), 0, torch.float32), str(tmp_path / "qwen.safetensors"))
    src = TensorSource(tmp_path / "qwen.safetensors")
    layout = qwen_image.FAMILY.recognise(src)
    built = qwen_image.FAMILY.build(src, layout, CPU, None)
    torch.manual_seed(0)
    x, ctx = torch.randn(1, 16, 8, 8), torch.randn(1, 6, 32)

    def call(m: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            out: torch.Tensor = qwen_image.FAMILY.sampling_model(m, built.recognition, CPU).unet(
                x, torch.tensor([0.5]), ctx, None)
        return out

    _streamed_equals_resident(built.module, call, budget_blocks=1, caplog=caplog)


def test_streamed_blocks_carry_what_is_set_on_them_after_offload(tmp_path: Path) -> None:
    """The fp8 matmul kernel's per-tensor scale is a buffer set after the model is placed: it streams too."""
    model = _flux(tmp_path, torch.float32, fp8=True)
    rec = flux.recognition(flux.layout_of(model))
    reference = copy.deepcopy(model)
    set_fp8_kernel(reference, "scaled_mm")
    blocks, other = offload_plan.module_blocks(model)
    plan = offload_plan.plan("tiny", blocks, other, offload_plan.minimum_bytes(blocks, other))
    offload(model, plan, CPU)
    assert set_fp8_kernel(model, "scaled_mm") > 0
    layer = next(m for m in model.get_submodule(plan.streamed[-1]).modules() if isinstance(m, Fp8Linear))
    assert layer.tensor_scale is not None
    host = layer.tensor_scale.data_ptr()
    seen: list[int] = []
    layer.register_forward_pre_hook(lambda m, _a: seen.append(m.tensor_scale.data_ptr()))
    torch.manual_seed(0)
    x, ctx, y = torch.randn(1, 16, 8, 8), torch.randn(1, 5, 64), torch.randn(1, 33)
    with torch.no_grad():
        got = flux.FAMILY.sampling_model(model, rec, CPU).unet(x, torch.tensor([0.7]), ctx, y)
        want = flux.FAMILY.sampling_model(reference, rec, CPU).unet(x, torch.tensor([0.7]), ctx, y)
    assert seen and host not in seen
    assert torch.equal(got, want)
