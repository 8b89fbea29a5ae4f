"""Batching across jobs: compatible KSampler calls of different jobs share one sampling loop, and each
still gets exactly its solo result, its own progress and its own cancellation."""

from __future__ import annotations

import copy
import dataclasses
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from comfymesh.config import Settings
from comfymesh.config.batching import BatchingSettings
from comfymesh.contracts.errors import InterruptedError_
from comfymesh.diffusion.__main__ import batching_slots
from comfymesh.diffusion.models.cache import ModelCache
from comfymesh.diffusion.nodes import nodes
from comfymesh.diffusion.sampling import batching
from comfymesh.diffusion.sampling.batching import SamplingBatcher, set_batcher
from comfymesh.stage.node import NodeContext

CKPT = "sd15.safetensors"
# 64x64 images, not smaller: at a 4x4 latent the tiny UNet's middle GroupNorms see 2 values per group and
# blow 1-ulp differences between batch sizes (matmul blocking) up to ~0.4; at 8x8 they stay ~1e-6
LONG = ", ".join(["a very detailed painting of a lighthouse on a cliff at dusk"] * 10)  # > 75 tokens: 154


@dataclass
class Job:
    seed: int
    text: str = "a cat"
    cfg: float = 7.0
    sampler: str = "euler"
    steps: int = 3
    batch: int = 1
    advanced: bool = False
    masked: bool = False  # inpainting: a start latent of its own with a noise_mask, denoise 0.6
    cancel_after: int | None = None  # cancel once this many progress events arrived
    progress: list[tuple[int, int]] = field(default_factory=list)


def load(ctx: NodeContext, ckpt: str) -> dict[str, Any]:
    model, clip, vae = nodes.impls["CheckpointLoaderSimple"](ctx, ckpt_name=ckpt)
    return {"model": model, "clip": clip, "vae": vae, "neg": nodes.impls["CLIPTextEncode"](ctx, text="blurry", clip=clip)[0]}


@pytest.fixture
def handles(node_ctx: NodeContext) -> dict[str, Any]:
    return load(node_ctx, CKPT)


@pytest.fixture
def forwards(tiny_home: Path, model_cache: ModelCache) -> Iterator[list[int]]:
    """The batch size of every UNet forward."""
    unet = model_cache.get(tiny_home / "models" / "checkpoints" / CKPT).parts.unet
    seen: list[int] = []
    handle = unet.register_forward_hook(lambda module, args, out: seen.append(int(args[0].shape[0])))
    yield seen
    handle.remove()


@pytest.fixture
def batch_invariant_unet(model_cache: ModelCache, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compute the UNet in float64: float32 matmuls round differently per batch size (1 ulp, which the
    random tiny UNet amplifies to ~1e-5 relative), float64 does not show through, so batched results
    must then equal solo results bit for bit."""
    plain = model_cache.sampling_model
    copies: dict[int, torch.nn.Module] = {}

    def sampling_model(ckpt: Any, loras: Any = ()) -> Any:
        sm = plain(ckpt, loras)
        unet = copies.setdefault(id(ckpt), copy.deepcopy(ckpt.parts.unet).double())

        def run(x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
            out: torch.Tensor = unet(x.double(), t.double(), encoder_hidden_states=ctx.double(),
                                     class_labels=None if y is None else y.double(), return_dict=False)[0]
            return out.float()

        return dataclasses.replace(sm, unet=run)

    monkeypatch.setattr(model_cache, "sampling_model", sampling_model)


def assert_matches(batched: torch.Tensor, alone: torch.Tensor) -> None:
    """Equal up to float32 rounding (relative to the latent's scale: the tiny model's are ~300)."""
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5 * float(alone.abs().max()))


def use(batcher: SamplingBatcher) -> SamplingBatcher:
    set_batcher(batcher)
    return batcher


@pytest.fixture(autouse=True)
def _reset_batcher() -> Iterator[None]:
    yield
    set_batcher(None)


def run_job(tiny_home: Path, handles: dict[str, Any], job: Job, index: int) -> torch.Tensor:
    ctx = NodeContext(job_id=f"job{index}", node_id=f"3{index}", class_type="KSampler", home=tiny_home,
                      report_progress=lambda v, m: job.progress.append((v, m)),
                      is_cancelled=lambda: job.cancel_after is not None and len(job.progress) >= job.cancel_after)
    (pos,) = nodes.impls["CLIPTextEncode"](ctx, text=job.text, clip=handles["clip"])
    (latent,) = nodes.impls["EmptyLatentImage"](ctx, width=64, height=64, batch_size=job.batch)
    denoise = 1.0
    if job.masked:
        start = torch.randn([job.batch, 4, 8, 8], generator=torch.Generator().manual_seed(job.seed + 50))
        mask = torch.zeros([1, 64, 64])
        mask[:, 16:48, 8 * job.seed % 32:] = 1.0
        latent, denoise = {"samples": start, "noise_mask": mask}, 0.6
    common = {"model": handles["model"], "steps": job.steps, "cfg": job.cfg, "sampler_name": job.sampler,
              "scheduler": "karras", "positive": pos, "negative": handles["neg"], "latent_image": latent}
    if job.advanced:
        (out,) = nodes.impls["KSamplerAdvanced"](ctx, add_noise="enable", noise_seed=job.seed, **common)
    else:
        (out,) = nodes.impls["KSampler"](ctx, seed=job.seed, denoise=denoise, **common)
    return torch.as_tensor(out["samples"])


def run_concurrently(tiny_home: Path, handles: dict[str, Any], jobs: list[Job]) -> list[Any]:
    results: list[Any] = [None] * len(jobs)

    def work(i: int) -> None:
        try:
            results[i] = run_job(tiny_home, handles, jobs[i], i)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def solo(tiny_home: Path, handles: dict[str, Any], job: Job) -> torch.Tensor:
    set_batcher(SamplingBatcher(0.0))
    return run_job(tiny_home, handles, dataclasses.replace(job, cancel_after=None, progress=[]), 9)


def psnr(handles: dict[str, Any], ctx: NodeContext, a: torch.Tensor, b: torch.Tensor) -> float:
    (img_a,) = nodes.impls["VAEDecode"](ctx, samples={"samples": a}, vae=handles["vae"])
    (img_b,) = nodes.impls["VAEDecode"](ctx, samples={"samples": b}, vae=handles["vae"])
    mse = float(((img_a - img_b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def test_three_jobs_share_one_loop_and_match_solo(tiny_home: Path, handles: dict[str, Any], node_ctx: NodeContext,
                                                  forwards: list[int]) -> None:
    # different seeds, prompts (one of 154 tokens: tiled with the 77-token ones), cfg (1.0 skips the
    # negative), latent batch sizes, and KSampler next to KSamplerAdvanced with the same schedule
    jobs = [Job(1, "a cat", 7.0), Job(2, LONG, 3.5, batch=2, advanced=True), Job(3, "a dog", 1.0)]
    batcher = use(SamplingBatcher(window_s=5.0, max_jobs=3))
    batched = run_concurrently(tiny_home, handles, jobs)
    assert batcher.stats.sizes == [3] and batcher.stats.solo_calls == 0
    # one UNet forward per step for all three: 2 + 2·2 + 1 rows (cfg 1.0 has no negative rows)
    assert forwards == [7, 7, 7]
    for job, out in zip(jobs, batched, strict=True):
        assert job.progress == [(1, 3), (2, 3), (3, 3)]
        alone = solo(tiny_home, handles, job)
        assert out.shape == alone.shape == (job.batch, 4, 8, 8)
        assert_matches(out, alone)
        assert psnr(handles, node_ctx, out, alone) >= 40.0


@pytest.mark.usefixtures("batch_invariant_unet")
@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "heun", "dpm_2_ancestral", "lms", "dpmpp_2s_ancestral",
                                     "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "ddpm", "lcm", "uni_pc"])
def test_every_sampler_gives_each_job_its_solo_result_exactly(tiny_home: Path, handles: dict[str, Any],
                                                              sampler: str) -> None:
    # per-step noise (ancestral generators, Brownian trees) must come from each job's own streams
    jobs = [Job(11, "a cat", 6.0, sampler, batch=2), Job(12, "a dog", 8.0, sampler), Job(13, "a bird", 1.0, sampler)]
    batcher = use(SamplingBatcher(window_s=5.0, max_jobs=3))
    batched = run_concurrently(tiny_home, handles, jobs)
    assert batcher.stats.sizes == [3]
    for job, out in zip(jobs, batched, strict=True):
        assert torch.equal(out, solo(tiny_home, handles, job)), job


@pytest.mark.usefixtures("batch_invariant_unet")
def test_inpainting_and_sdxl_calls_batch_too(tiny_home: Path, node_ctx: NodeContext) -> None:
    for handles, jobs in ((load(node_ctx, CKPT), [Job(1, masked=True), Job(2, "a dog", 5.0, masked=True, batch=2)]),
                          (load(node_ctx, "sdxl.safetensors"), [Job(3, "a cat"), Job(4, "a dog", 5.0, "dpmpp_2m_sde")])):
        if jobs[1].sampler != jobs[0].sampler:  # a different sampler is another key: not merged
            batcher = use(SamplingBatcher(window_s=0.2, max_jobs=2))
            run_concurrently(tiny_home, handles, jobs)
            assert batcher.stats.batches == 0
            jobs[1].sampler = jobs[0].sampler
        batcher = use(SamplingBatcher(window_s=5.0, max_jobs=2))
        batched = run_concurrently(tiny_home, handles, jobs)
        assert batcher.stats.sizes == [2]
        for job, out in zip(jobs, batched, strict=True):
            assert torch.equal(out, solo(tiny_home, handles, job)), job


def test_incompatible_calls_are_not_merged(tiny_home: Path, handles: dict[str, Any], forwards: list[int]) -> None:
    jobs = [Job(1, steps=3), Job(2, steps=4)]  # different schedules
    batcher = use(SamplingBatcher(window_s=0.3, max_jobs=2))
    results = run_concurrently(tiny_home, handles, jobs)
    assert all(isinstance(r, torch.Tensor) for r in results)
    assert batcher.stats.batches == 0 and batcher.stats.solo_calls == 2
    assert sorted(forwards) == [2] * 7


def test_cancelled_member_leaves_without_breaking_the_others(tiny_home: Path, handles: dict[str, Any]) -> None:
    jobs = [Job(1, steps=5), Job(2, "a dog", steps=5, cancel_after=2), Job(3, "a bird", steps=5)]
    batcher = use(SamplingBatcher(window_s=5.0, max_jobs=3))
    results = run_concurrently(tiny_home, handles, jobs)
    assert batcher.stats.sizes == [3]
    assert isinstance(results[1], InterruptedError_) and results[1].node_id == "31"
    assert jobs[1].progress == [(1, 5), (2, 5)]
    for i in (0, 2):
        assert jobs[i].progress == [(k, 5) for k in range(1, 6)]
        assert_matches(results[i], solo(tiny_home, handles, jobs[i]))


def test_everyone_cancelled_stops_the_loop(tiny_home: Path, handles: dict[str, Any], forwards: list[int]) -> None:
    jobs = [Job(1, steps=6, cancel_after=1), Job(2, steps=6, cancel_after=1)]
    use(SamplingBatcher(window_s=5.0, max_jobs=2))
    results = run_concurrently(tiny_home, handles, jobs)
    assert all(isinstance(r, InterruptedError_) for r in results)
    assert len(forwards) == 1


def test_window_zero_means_no_batching(tiny_home: Path, handles: dict[str, Any], forwards: list[int]) -> None:
    assert not BatchingSettings().batching_enabled  # opt-in on every device
    assert BatchingSettings(batch_window_ms=20, batch_max=4).batch_window_s == 0.02
    assert not BatchingSettings(batch_window_ms=20, batch_max=1).batching_enabled
    set_batcher(None)  # the process-wide one, from the settings: off by default
    run_concurrently(tiny_home, handles, [Job(1), Job(2)])
    batcher = batching.get_batcher()
    assert batcher.stats.batches == 0 and batcher.stats.solo_calls == 2
    assert forwards == [2] * 6


def test_stage_slots_rise_with_batching() -> None:
    assert batching_slots(Settings(stage_slots=2, batch_window_ms=15, batch_max=6)) == 6
    assert batching_slots(Settings(stage_slots=2, batch_window_ms=0, batch_max=6)) == 2
    assert batching_slots(Settings(stage_slots=12, batch_window_ms=15, batch_max=6)) == 12


@pytest.mark.usefixtures("batch_invariant_unet")
def test_padded_batches_use_power_of_two_unet_sizes_and_match_solo(tiny_home: Path, handles: dict[str, Any],
                                                                   forwards: list[int]) -> None:
    # 3 jobs with CFG = 6 UNet rows, padded to 8 (one prepared CUDA-graph bucket instead of a new one)
    jobs = [Job(21, "a cat", 6.0), Job(22, "a dog", 8.0), Job(23, "a bird", 7.0)]
    batcher = use(SamplingBatcher(window_s=5.0, max_jobs=3, pad=True))
    batched = run_concurrently(tiny_home, handles, jobs)
    assert batcher.stats.sizes == [3]
    assert forwards == [8, 8, 8]
    for job, out in zip(jobs, batched, strict=True):
        assert torch.equal(out, solo(tiny_home, handles, job)), job


def test_a_call_on_an_idle_gpu_starts_at_once(tiny_home: Path, handles: dict[str, Any]) -> None:
    # the window only holds calls back while another loop keeps the GPU busy: a lone job never waits it out
    batcher = use(SamplingBatcher(window_s=30.0, max_jobs=4, solo_when_idle=True))
    start = time.monotonic()
    run_concurrently(tiny_home, handles, [Job(31, steps=2)])
    assert time.monotonic() - start < 20 and batcher.stats.solo_calls == 1 and batcher.stats.batches == 0
    # while a loop keeps the GPU busy (held open here), the next arrivals gather and run as one batch
    batcher.config = BatchingSettings(batch_window_ms=5000, batch_max=2)
    with batcher._lock:
        batcher._sampling += 1
    try:
        run_concurrently(tiny_home, handles, [Job(33, "a dog", steps=2), Job(34, "a bird", steps=2)])
    finally:
        with batcher._lock:
            batcher._sampling -= 1
    assert batcher.stats.sizes == [2] and batcher.stats.solo_calls == 1
