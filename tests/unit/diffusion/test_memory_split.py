"""A model split across several devices of one replica (issue 19): the plan fills the listed devices in call order by
their free memory and refuses what they cannot hold together; a tiny FLUX split over three CPU devices (a device set
of "cpu" entries, each its own stage) computes exactly what the unsplit model does, its hidden states crossing the
stages the plan says, and the model cache splits a model over its budget when COMFYMESH_DIFFUSION_SPLIT_DEVICES is
set."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfymesh.config import Settings
from comfymesh.contracts.errors import ModelTooLargeError
from comfymesh.diffusion.families import flux
from comfymesh.diffusion.memory import offload_plan
from comfymesh.diffusion.memory.fit import resident_bytes
from comfymesh.diffusion.memory.split_placement import place_split, split_of
from comfymesh.diffusion.memory.split_plan import split
from comfymesh.diffusion.memory.streaming import streamer_of
from comfymesh.diffusion.models.cache import ModelCache
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.models.tiny_flux import flux_shapes, random_tensors
from tests.flux_call import flux_call

CPU = torch.device("cpu")
SHAPES = flux_shapes(width=128, head_dim=64, depth=2, depth_single=3)


def test_the_plan_fills_devices_in_call_order_by_their_free_memory() -> None:
    blocks = {f"b.{i}": 10 for i in range(6)}
    plan = split("m", blocks, other=5, free_bytes_per_device=[("cuda:0", 26), ("cuda:1", 30), ("cuda:2", 100)])
    assert [s.blocks for s in plan.stages] == [("b.0", "b.1"), ("b.2", "b.3", "b.4"), ("b.5",)]
    assert [s.nbytes for s in plan.stages] == [25, 30, 10]
    assert plan.stage_of("b.4") == 1 and plan.stage_of("norm_out") == 0
    # into cuda:1, into cuda:2, back to cuda:0 for the output layers
    assert plan.transfers == 3
    text = plan.describe()
    assert "split over 3 of 3 devices" in text and "cuda:1 ← 3 blocks (b.2 … b.4)" in text
    assert "cuda:0 ← the non-block modules and 2 blocks" in text and "3 hidden-state transfers" in text

    roomy = split("m", blocks, 5, [("cuda:0", 30), ("cuda:1", 100), ("cuda:2", 100)])
    assert roomy.used == (0, 1) and roomy.stages[2].blocks == () and roomy.transfers == 2
    assert "cuda:1 ← 4 blocks (b.2 … b.5)" in roomy.describe()
    one = split("m", blocks, 5, [("cuda:0", 24), ("cuda:1", 100)])
    assert "cuda:0 ← the non-block modules and 1 block (b.0)" in one.describe()
    assert "split over 2 of 3 devices" in roomy.describe() and "cuda:2" not in roomy.describe()
    alone = split("m", blocks, 5, [("cuda:0", 65), ("cuda:1", 100)])
    assert alone.used == (0,) and alone.transfers == 0


def test_the_plan_refuses_what_the_devices_cannot_hold_together() -> None:
    blocks = {f"b.{i}": 10 * 2**20 for i in range(6)}
    # 65 MiB needed, 68 MiB free in all, but the leftovers (4 and 9 MiB) take no 10 MiB block
    with pytest.raises(ModelTooLargeError) as info:
        split("flux.safetensors", blocks, 5 * 2**20, [("cuda:0", 29 * 2**20), ("cuda:1", 39 * 2**20)])
    message = str(info.value)
    assert "flux.safetensors needs 65.0 MiB" in message and "only its first 6 blocks" not in message
    assert "first 6" not in message and "first 5 blocks" in message and "10.0 MiB left over" in message
    assert "cuda:1 (39.0 MiB free)" in message and info.value.non_retryable
    with pytest.raises(ModelTooLargeError, match=r"non-block modules need 5\.0 MiB"):
        split("m", blocks, 5 * 2**20, [("cuda:0", 4 * 2**20), ("cuda:1", 2**30)])


def _flux(tmp_path: Path) -> torch.nn.Module:
    path = tmp_path / "flux.safetensors"
    save_file(random_tensors(SHAPES, 0, torch.float32), str(path))
    src = TensorSource(path)
    return flux.FAMILY.build(src, flux.FAMILY.recognise(src), CPU, None).module


def test_a_flux_split_over_three_devices_equals_the_unsplit_call(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    model = _flux(tmp_path)
    call = flux_call(model)
    blocks, other = offload_plan.module_blocks(model)
    sizes = list(blocks.values())
    # free sizes that force two blocks on the first device, two on the second, one on the third
    free = [("cpu", other + sizes[0] + sizes[1]), ("cpu", sizes[2] + sizes[3]), ("cpu", 2**30)]
    plan = split("tiny", blocks, other, free)
    assert [len(s.blocks) for s in plan.stages] == [2, 2, 1] and plan.transfers == 3
    # the reference runs on allocator-aligned copies too (CPU kernels round by alignment: test_memory_offload)
    unsplit = call(copy.deepcopy(model))
    split_model = copy.deepcopy(model)
    with caplog.at_level(logging.INFO, logger="comfymesh.diffusion.memory.split_placement"):
        placement = place_split(split_model, plan, ["cpu", "cpu", "cpu"])
    assert plan.describe() in caplog.text and split_of(split_model) is placement
    stages_seen: list[int] = []  # the stage each block ran in, in call order
    for name in blocks:
        split_model.get_submodule(name).register_forward_pre_hook(
            lambda _m, _a, name=name: stages_seen.append(plan.stage_of(name)))
    first, again = call(split_model), call(split_model)
    assert torch.equal(first, unsplit) and torch.equal(again, unsplit)
    assert stages_seen == 2 * [0, 0, 1, 1, 2]
    assert placement.transfers == plan.transfers  # the last call's hidden states crossed every boundary

    block_ids = {id(split_model.get_submodule(b)) for b in blocks}
    placement.remove()
    assert split_of(split_model) is None and not placement.handles
    assert not split_model._forward_pre_hooks and not split_model._forward_hooks
    # only the test's own hooks on the blocks are left
    assert all(len(m._forward_pre_hooks) == (id(m) in block_ids) for m in split_model.modules())
    assert torch.equal(call(split_model), unsplit)


def test_place_split_wants_a_device_per_stage(tmp_path: Path) -> None:
    model = _flux(tmp_path)
    blocks, other = offload_plan.module_blocks(model)
    plan = split("tiny", blocks, other, [("cpu", 2**30), ("cpu", 2**30)])
    with pytest.raises(ValueError, match="2 stages but 3 devices"):
        place_split(model, plan, ["cpu", "cpu", "cpu"])


def test_the_cache_splits_a_model_over_its_budget_across_the_split_devices(
        tmp_path: Path, configure: Callable[..., Settings], caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "flux1-dev.safetensors"
    save_file(random_tensors(SHAPES, 0, torch.float32), str(path))
    need = resident_bytes([path], torch.float32)
    resident = ModelCache(budget_bytes=2 * need, device=CPU)
    reference = flux_call(resident.unet_file(path).unet()[0])
    unsplit = reference(resident.unet_file(path).unet()[0])

    configure(diffusion_split_devices="cpu,cpu,cpu")
    budget = need * 3 // 4  # each CPU device of the set offers the budget: the model takes two of them
    cache = ModelCache(budget_bytes=budget, device=CPU)
    with caplog.at_level(logging.INFO, logger="comfymesh.diffusion.memory.split_placement"):
        loaded = cache.unet_file(path)
    model = loaded.unet()[0]
    placement = split_of(model)
    assert placement is not None and streamer_of(model) is None
    assert placement.plan.used == (0, 1) and "split over 2 of 3 devices" in caplog.text
    assert loaded.nbytes == placement.plan.stages[0].nbytes <= budget  # the budget holds this device's part
    assert torch.equal(reference(model), unsplit)

    configure(diffusion_split_devices="cpu,cpu")
    with pytest.raises(ModelTooLargeError, match="COMFYMESH_DIFFUSION_SPLIT_DEVICES"):
        ModelCache(budget_bytes=need // 3, device=CPU).unet_file(path)
