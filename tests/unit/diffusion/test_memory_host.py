"""The model cache's host-memory budget (issue 16), run on the CPU with small explicit budgets as a GPU stage would
apply them: a streamed model the host cannot hold is refused before any weight is read (non-retryable alone,
retryable while other entries or jobs hold host memory), and text encoders moved off the device are evicted LRU
when the host budget cannot hold them. A CPU stage keeps one budget, as before."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from comfymesh.contracts.errors import ModelTooLargeError, ResourceExhaustedError
from comfymesh.diffusion.families.loading import compute_dtype, host_build
from comfymesh.diffusion.memory import offload_plan
from comfymesh.diffusion.memory.fit import resident_bytes, tensor_bytes
from comfymesh.diffusion.memory.host import SETTING, default_host_budget, host_memory
from comfymesh.diffusion.memory.streaming import streamer_of
from comfymesh.diffusion.models import cache as cache_mod
from comfymesh.diffusion.models.cache import ModelCache
from comfymesh.diffusion.models.checkpoint import load_unet_file
from comfymesh.diffusion.models.convert import Placement
from comfymesh.diffusion.models.tiny_flux import flux_shapes, make_tiny_flux, random_tensors

CPU = torch.device("cpu")
MiB = 2**20


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("flux")
    out = make_tiny_flux(root, dtype=torch.float32)
    # a FLUX transformer with more blocks than the tiny text encoders' bytes: it streams under a budget they fit
    out["deep"] = root / "flux_deep.safetensors"
    save_file(random_tensors(flux_shapes(width=128, head_dim=64, depth=2, depth_single=30), 0, torch.float32),
              str(out["deep"]))
    return out


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The diffusion-model files the cache reads weights from (the real loader runs; calls are recorded)."""
    seen: list[Path] = []
    real: Callable[..., Any] = cache_mod.load_unet_file

    def load_unet_file(path: Path, *args: Any) -> Any:
        seen.append(path)
        return real(path, *args)

    monkeypatch.setattr(cache_mod, "load_unet_file", load_unet_file)
    return seen


def test_default_host_budget_is_a_share_of_ram_less_what_is_used(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       131072000 kB\nMemFree:         1000 kB\nMemAvailable:   98304000 kB\n"
                       "HugePages_Total:       0\n")
    total, available = host_memory(meminfo)
    assert (total, available) == (131072000 * 1024, 98304000 * 1024)
    assert default_host_budget(total, available) == int(total * 0.8) - (total - available)
    assert default_host_budget(100, 10) == 0  # more in use than the share: nothing to give
    assert host_memory(tmp_path / "missing") == (0, 0) and default_host_budget(0, 0) == 16 * 2**30


def test_a_cpu_stage_keeps_one_budget(files: dict[str, Path]) -> None:
    """On a CPU device host memory is the device: no host budget, a streamed model loads as it always has."""
    blocks, other = offload_plan.file_blocks(tensor_bytes([files["deep"]], torch.float32))
    cache = ModelCache(budget_bytes=offload_plan.minimum_bytes(blocks, other), device=CPU)
    assert cache.host_budget is None
    loaded = cache.unet_file(files["deep"])
    assert streamer_of(loaded.unet()[0]) is not None and cache.used_bytes() == loaded.nbytes
    assert cache.host_used_bytes() == loaded.host_bytes > 0  # reported, never enforced


@pytest.fixture(scope="module")
def sizes(files: dict[str, Path]) -> dict[str, int]:
    """Bytes the tiny encoders and FLUX model take once loaded (the built modules, more than the file estimate)."""
    roomy = ModelCache(budget_bytes=2**30, device=CPU)
    return {"encoders": roomy.text_encoder_files([files["clip_l"], files["t5"]], "flux").nbytes,
            "model": roomy.unet_file(files["diffusion_model"]).nbytes}


def _streamed_cache(files: dict[str, Path], sizes: dict[str, int], host_budget: int) -> ModelCache:
    """A budget the text encoders fit and the deep model only streamed in."""
    encoders = sizes["encoders"]
    need = resident_bytes([files["deep"]], torch.float32)
    assert encoders < need
    return ModelCache(budget_bytes=encoders + MiB, device=CPU, host_budget_bytes=host_budget)


def test_a_streamed_model_the_host_cannot_hold_is_refused_before_any_weight_is_read(
        files: dict[str, Path], sizes: dict[str, int], loads: list[Path]) -> None:
    need = resident_bytes([files["deep"]], torch.float32)  # built on the host in float32
    cache = _streamed_cache(files, sizes, host_budget=need // 2)
    encoders = cache.text_encoder_files([files["clip_l"], files["t5"]], "flux")
    with pytest.raises(ModelTooLargeError) as info:
        cache.unet_file(files["deep"])
    message = str(info.value)
    assert "flux_deep.safetensors needs" in message and "host memory" in message and SETTING in message
    assert info.value.non_retryable
    assert loads == []  # refused before any weight was read
    # nor was anything moved or evicted for it
    assert cache.used_bytes() == encoders.nbytes and cache.host_used_bytes() == 0 and len(cache.list()) == 1


def test_host_memory_other_jobs_hold_makes_a_streamed_load_retryable(
        files: dict[str, Path], sizes: dict[str, int], loads: list[Path], caplog: pytest.LogCaptureFixture) -> None:
    need = resident_bytes([files["deep"]], torch.float32)
    cache = _streamed_cache(files, sizes, host_budget=need + 4 * MiB)  # the model alone fits, not beside the encoders
    encoders = cache.text_encoder_files([files["clip_l"], files["t5"]], "flux")  # a job holds them
    with (caplog.at_level(logging.INFO, logger="comfymesh.diffusion.models.cache"),
          pytest.raises(ResourceExhaustedError) as info):
        cache.unet_file(files["deep"])
    assert not info.value.non_retryable and "other models hold" in str(info.value)
    # the encoders made room on the device by moving to host memory, then left it for the host budget
    assert "moved to host memory to make room" in caplog.text
    assert f"within the {cache.host_budget}-byte host-memory budget" in caplog.text
    assert loads == [] and cache.list() == []
    del encoders
    gc.collect()
    loaded = cache.unet_file(files["deep"])  # the job let go: it fits now
    assert loads == [files["deep"]] and streamer_of(loaded.unet()[0]) is not None
    assert cache.host_used_bytes() == loaded.host_bytes > 0 and cache.used_bytes() == loaded.nbytes <= cache.budget


def test_encoders_moved_to_host_are_evicted_lru_within_the_host_budget(
        files: dict[str, Path], sizes: dict[str, int], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = [files["clip_l"], files["t5"]]
    other = make_tiny_flux(tmp_path, seed=7, dtype=torch.float32)
    second = [other["clip_l"], other["t5"]]
    enc, model = sizes["encoders"], sizes["model"]
    # either set of encoders fits beside the model on the device, not both; one set in host memory, not two
    cache = ModelCache(budget_bytes=enc + model - 1, device=CPU, host_budget_bytes=enc * 3 // 2)
    with caplog.at_level(logging.INFO, logger="comfymesh.diffusion.models.cache"):
        ckpt = cache.text_encoder_files(first, "flux")
        first_digest = ckpt.digest
        with cache.family_text_lora(ckpt):
            pass
        del ckpt
        cache.unet_file(files["diffusion_model"])  # the first set moves to host memory to make room
        assert cache.host_used_bytes() == enc and "moved to host memory to make room" in caplog.text
        ckpt = cache.text_encoder_files(second, "flux")  # evicts the model (the host set frees no device memory)
        with cache.family_text_lora(ckpt):
            pass
        # after encoding the second set leaves the device; the host budget holds one set: the first is evicted
        assert "moved to host memory after encoding" in caplog.text
        assert f"clip_l.safetensors (text_encoders, {enc} bytes)" in caplog.text
        assert "host-memory budget" in caplog.text
    assert [e["digest"] for e in cache.list()] == [ckpt.digest] and ckpt.digest != first_digest
    assert cache.host_used_bytes() == enc and cache.used_bytes() == 0


def test_encoders_the_host_budget_cannot_hold_are_evicted_instead_of_moved(
        files: dict[str, Path], sizes: dict[str, int], caplog: pytest.LogCaptureFixture) -> None:
    encoders = [files["clip_l"], files["t5"]]
    enc, model = sizes["encoders"], sizes["model"]
    cache = ModelCache(budget_bytes=enc + model - 1, device=CPU, host_budget_bytes=enc - 1)
    ckpt = cache.text_encoder_files(encoders, "flux")
    with cache.family_text_lora(ckpt):
        pass
    del ckpt
    with caplog.at_level(logging.INFO, logger="comfymesh.diffusion.models.cache"):
        diffusion = cache.unet_file(files["diffusion_model"])
    assert "instead of moving them to host memory to make room" in caplog.text
    assert [e["name"] for e in cache.list()] == [diffusion.name]
    assert cache.host_used_bytes() == 0 and cache.used_bytes() == diffusion.nbytes


def test_a_streamed_model_is_built_on_the_host_in_the_gpu_compute_dtype(files: dict[str, Path]) -> None:
    """A model that streams to a GPU is built on the host in bf16 (half a float32 build's host memory); outside
    that build, a CPU model stays float32."""
    with host_build(torch.bfloat16):
        assert compute_dtype(CPU) == torch.bfloat16
        built = load_unet_file(files["deep"], Placement(), "default").unet
    assert compute_dtype(CPU) == torch.float32 and compute_dtype(torch.device("cuda")) == torch.bfloat16
    assert built is not None and {p.dtype for p in built.parameters()} == {torch.bfloat16}
    plain = load_unet_file(files["deep"], Placement(), "default").unet
    assert plain is not None and {p.dtype for p in plain.parameters()} == {torch.float32}
