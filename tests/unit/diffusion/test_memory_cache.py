"""The model cache's memory decisions on the CPU with small budgets: a model that cannot fit is refused before it
loads (non-retryable alone, retryable while another job holds memory), text encoders leave the device after
encoding when the budget cannot hold them beside the diffusion model, and a diffusion model over the budget streams
its blocks with the same output as a resident one."""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfymesh.contracts.errors import ModelTooLargeError, ResourceExhaustedError
from comfymesh.contracts.failures import exception_from_failure, failure_from_exception
from comfymesh.diffusion.families import flux
from comfymesh.diffusion.memory import offload_plan
from comfymesh.diffusion.memory.encoders import encoders_leave_device
from comfymesh.diffusion.memory.fit import resident_bytes, tensor_bytes
from comfymesh.diffusion.memory.streaming import streamer_of
from comfymesh.diffusion.models.cache import LoadedCheckpoint, ModelCache
from comfymesh.diffusion.models.tiny_flux import flux_shapes, make_tiny_flux, random_tensors

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_tiny_flux(tmp_path_factory.mktemp("flux"), dtype=torch.float32)


def test_a_model_larger_than_the_budget_is_refused_before_it_loads(files: dict[str, Path]) -> None:
    need = resident_bytes([files["diffusion_model"]], torch.float32)
    cache = ModelCache(budget_bytes=need // 4, device=CPU)
    cache.block_offload = False
    with pytest.raises(ModelTooLargeError) as info:
        cache.unet_file(files["diffusion_model"])
    assert "flux1-dev.safetensors needs" in str(info.value) and "MiB" in str(info.value)
    assert info.value.non_retryable and cache.list() == [] and cache.used_bytes() == 0
    # on the wire: its own type, not retryable, back as the same class
    failure = failure_from_exception(info.value, node_id="4")
    assert failure.type == "model_too_large" and failure.non_retryable
    assert isinstance(exception_from_failure(failure), ModelTooLargeError)


def test_a_model_that_other_jobs_leave_no_room_for_is_retryable(files: dict[str, Path], tmp_path: Path) -> None:
    other = make_tiny_flux(tmp_path, seed=7, dtype=torch.float32)["diffusion_model"]
    model_bytes = resident_bytes([files["diffusion_model"]], torch.float32)
    cache = ModelCache(budget_bytes=model_bytes * 3 // 2, device=CPU)
    cache.block_offload = False
    running = cache.unet_file(other)  # a job samples with it
    with pytest.raises(ResourceExhaustedError) as info:
        cache.unet_file(files["diffusion_model"])
    assert not info.value.non_retryable and "other jobs hold" in str(info.value)
    assert cache.list() == []  # evicted, but still held: its memory is not free
    del running
    gc.collect()
    assert cache.unet_file(files["diffusion_model"]).nbytes <= cache.budget  # the job let go: it fits now


def test_encoder_placement_planner() -> None:
    assert not encoders_leave_device(budget=100, encoder_bytes=30, model_bytes=60, other_bytes=10)
    assert encoders_leave_device(budget=100, encoder_bytes=30, model_bytes=60, other_bytes=11)
    assert encoders_leave_device(budget=100, encoder_bytes=50, model_bytes=60, other_bytes=0)


def test_text_encoders_leave_the_device_after_encoding_when_memory_is_short(
        files: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    encoders = [files["clip_l"], files["t5"]]
    roomy = ModelCache(budget_bytes=2**30, device=CPU)
    ckpt = roomy.text_encoder_files(encoders, "flux")
    enc, model = ckpt.nbytes, roomy.unet_file(files["diffusion_model"]).nbytes
    with roomy.family_text_lora(ckpt):
        pass
    assert roomy.used_bytes() == enc + model  # both stay

    cache = ModelCache(budget_bytes=enc + model - 1, device=CPU)  # either fits, not both
    ckpt = cache.text_encoder_files(encoders, "flux")
    modules = dict(ckpt.parts.clips)
    with caplog.at_level(logging.INFO, logger="comfymesh.diffusion.models.cache"):
        with cache.family_text_lora(ckpt):
            assert cache.used_bytes() == ckpt.nbytes  # on the device while encoding
        assert "moved to host memory after encoding" not in caplog.text  # no diffusion model known yet: stays
        diffusion = cache.unet_file(files["diffusion_model"])  # room made by moving the encoders, not dropping
        assert "moved to host memory to make room" in caplog.text
        assert cache.used_bytes() == diffusion.nbytes and len(cache.list()) == 2
        # a job still samples with the model evicted for them: retry later
        with pytest.raises(ResourceExhaustedError, match="other jobs hold"), cache.family_text_lora(ckpt):
            pass
        del diffusion
        with cache.family_text_lora(ckpt):  # the next prompt: back on the device, the model evicted for it
            assert cache.text_encoder_files(encoders, "flux") is ckpt and dict(ckpt.parts.clips) == modules
        assert "moved back to cpu" in caplog.text
        assert "moved to host memory after encoding" in caplog.text  # a model was loaded last: make room for it
    assert cache.used_bytes() == 0 and cache.text_encoder_files(encoders, "flux") is ckpt  # never reloaded


def test_a_diffusion_model_over_the_budget_streams_its_blocks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "flux_deeper.safetensors"
    shapes = flux_shapes(width=128, head_dim=64, depth=2, depth_single=3)
    save_file(random_tensors(shapes, 0, torch.float32), str(path))
    blocks, other = offload_plan.file_blocks(tensor_bytes([path], torch.float32))
    need = other + sum(blocks.values())
    minimum = offload_plan.minimum_bytes(blocks, other)
    assert minimum < need
    resident = ModelCache(budget_bytes=2 * need, device=CPU).unet_file(path)
    assert streamer_of(resident.unet()[0]) is None
    with caplog.at_level(logging.INFO, logger="comfymesh.diffusion.memory.streaming"):
        streamed = ModelCache(budget_bytes=minimum, device=CPU).unet_file(path)
    assert streamer_of(streamed.unet()[0]) is not None and "blocks streamed" in caplog.text
    assert streamed.nbytes <= minimum  # the device part is what the budget holds
    with pytest.raises(ModelTooLargeError, match="with its blocks streamed"):
        ModelCache(budget_bytes=minimum // 2, device=CPU).unet_file(path)

    torch.manual_seed(0)
    x, ctx, y = torch.randn(1, 16, 8, 8), torch.randn(1, 5, 64), torch.randn(1, 33)

    def call(ckpt: LoadedCheckpoint) -> torch.Tensor:
        cache_sm = ModelCache(budget_bytes=2 * need, device=CPU).sampling_model(ckpt)
        with torch.no_grad():
            out: torch.Tensor = cache_sm.unet(x, torch.tensor([0.7]), ctx, y)
        return out

    assert resident.family == flux.NAME
    assert torch.equal(call(streamed), call(resident))


def test_the_estimate_counts_fp8_linears_as_held_and_fp8_token_tables_as_upcast(tmp_path: Path) -> None:
    fp8 = torch.float8_e4m3fn
    path = tmp_path / "encoder.safetensors"
    save_file({"model.embed_tokens.weight": torch.zeros(10, 8).to(fp8),  # upcast at load: no linear
               "model.layers.0.q_proj.weight": torch.zeros(8, 8).to(fp8),  # an Fp8Linear: 1 byte + a row scale
               "model.norm.weight": torch.ones(8)}, str(path))
    counted = tensor_bytes([path], torch.bfloat16)
    assert counted == {"model.embed_tokens.weight": 10 * 8 * 2, "model.layers.0.q_proj.weight": 8 * 8 + 8 * 4,
                       "model.norm.weight": 8 * 2}
