"""Batching across jobs: KSampler calls of different jobs that can share every UNet forward run as one loop.

Calls are compatible when they use the same loaded model (checkpoint digest + LoRA patches), the same
sampler and the same sigma schedule (so steps, scheduler, denoise and start/end steps agree), the same
per-sample latent shape, and all or none carry a noise_mask. Seeds, prompts (any token lengths), cfg,
latent batch sizes and KSampler vs KSamplerAdvanced may differ.

A KSampler call prepares its inputs in its own worker thread (noise from its own seed/batch_index,
conditioning, start point), then submits them to the process-wide `SamplingBatcher` under its
compatibility key and blocks on a future. A call that finds the GPU idle (no sampling loop running)
starts at once ($COMFYMESH_BATCH_IDLE_START, default on); otherwise the first call of a key opens a
gather window ($COMFYMESH_BATCH_WINDOW_MS;
default 0 = off: opt in, see bench/README.md); when it ends, or when $COMFYMESH_BATCH_MAX calls
(default 8) have joined, a runner thread samples all of them as one batch:
the latents are stacked row-wise, every model evaluation is one UNet call holding each job's
negative and positive rows (contexts of different lengths are tiled to a common length as in
GuidedDenoiser, or run as one call per length), and CFG uses a per-row cfg tensor [B, 1, 1, 1]. UNet
batches are padded to powers of two ($COMFYMESH_BATCH_PAD, default on) so a few shape buckets, prepared
by the warm-up manifest, serve every batch.

Each job still gets exactly what it would get alone: its own initial noise, its own per-step noise
streams (ancestral: a generator per job, seeded as `DefaultNoise` would be; SDE: a Brownian tree per job
over its own rows with its own seed), so every implemented sampler can batch. Progress and previews fan
out per job from the step callback. A cancelled job (its check_cancelled raises) leaves the batch at once:
its future gets the error, so its own thread raises, while its rows ride along as dead weight (rows never
influence each other) and are discarded; when every member has gone the loop stops.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from comfymesh.config import get_settings
from comfymesh.config.batching import BatchingSettings
from comfymesh.contracts.errors import ResourceExhaustedError
from comfymesh.diffusion.sampling.guidance import MaskedDenoiser, _average, _tile_to, sigma_and_timestep
from comfymesh.diffusion.sampling.ksampler import (
    PreparedSample,
    SamplingModel,
    StepHook,
    finish_sample,
    mask_fn,
    prepare_sample,
    run_prepared,
)
from comfymesh.diffusion.sampling.noise import BrownianNoise, DefaultNoise
from comfymesh.diffusion.sampling.samplers import CFG_PP_SAMPLERS
from comfymesh.diffusion.sampling.samplers.base import SamplerEnv, SdeNoise, StepNoise
from comfymesh.logs import log_fields

DEFAULT_MAX = BatchingSettings().batch_max

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------
# one batched sampling loop


class _Abandoned(Exception):
    """Every member of a batch has left (cancelled): stop the loop."""


class _RunAlone(Exception):
    """The batch failed for a reason other than memory: the member samples on its own instead."""


@dataclass
class _Member:
    prep: PreparedSample
    job: str
    on_step: StepHook | None
    check_cancelled: Callable[[], None] | None
    future: Future[dict[str, Any]] = field(default_factory=Future)
    rows: slice = field(default_factory=lambda: slice(0))
    alive: bool = True


class _PerJobNoise:
    """Per-step noise for stacked jobs: each job's rows come from the generator it would have alone."""

    def __init__(self, x: torch.Tensor, members: Sequence[_Member]) -> None:
        self.parts = [(m.rows, DefaultNoise(x[m.rows], m.prep.seed)) for m in members]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([draw(x[rows]) for rows, draw in self.parts])


class _PerJobBrownian:
    """SDE noise for stacked jobs: one Brownian tree per job over its own rows, entropy = its seed."""

    def __init__(self, x: torch.Tensor, sigmas: torch.Tensor, members: Sequence[_Member], on_device: bool) -> None:
        self.parts = [(m.rows, BrownianNoise(x[m.rows], sigmas, m.prep.seed, on_device=on_device))
                      for m in members]

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return torch.cat([tree(sigma, sigma_next, like[rows]) for rows, tree in self.parts])


@dataclass
class _BatchEnv(SamplerEnv):
    members: Sequence[_Member] = ()

    def default_noise(self, x: torch.Tensor) -> StepNoise:
        return _PerJobNoise(x, self.members)

    def brownian(self, x: torch.Tensor, sigmas: torch.Tensor, on_device: bool = False) -> SdeNoise:
        return _PerJobBrownian(x, sigmas, self.members, on_device)


@dataclass
class _Block:
    """Rows `rows` of x with one conditioning entry; `side` is "neg" or "pos" of member `owner`."""

    owner: int
    side: str
    rows: slice
    context: torch.Tensor
    y: torch.Tensor | None
    concat: torch.Tensor | None = None  # the entry's extra UNet input channels (inpainting, ip2p)


class BatchedGuidedDenoiser:
    """GuidedDenoiser for stacked jobs: every job's negative and positive rows in one UNet call per eval."""

    last_uncond: torch.Tensor | None = None

    def __init__(self, model: SamplingModel, members: Sequence[_Member], before_eval: Callable[[], None],
                 pad: bool = False, keep_uncond: bool = False) -> None:
        """`keep_uncond`: as GuidedDenoiser's (CFG++ samplers): negatives evaluated at cfg 1 too, and each
        evaluation's unconditional rows kept in `last_uncond`."""
        self.model = model
        self.members = members
        self.before_eval = before_eval
        self.pad = pad
        self.keep_uncond = keep_uncond
        self.blocks: list[_Block] = []
        self.skip_negative: list[bool] = []
        cfgs = []
        for j, m in enumerate(members):
            skip = math.isclose(m.prep.cfg, 1.0) and not keep_uncond
            self.skip_negative.append(skip)
            sides = [("pos", m.prep.positive)] if skip else [("neg", m.prep.negative), ("pos", m.prep.positive)]
            for side, entries in sides:
                self.blocks += [_Block(j, side, m.rows, e.context, e.y, e.concat) for e in entries]
            cfgs.append(torch.full((m.prep.rows, 1, 1, 1), m.prep.cfg, dtype=torch.float32))
        self.cfg = torch.cat(cfgs).to(model.device)
        lengths = [b.context.shape[1] for b in self.blocks]
        lcm = math.lcm(*lengths)
        if lcm <= 4 * min(lengths):  # one UNet call: contexts tiled to a common length
            self.groups = [(lcm, self.blocks)]
        else:  # one call per context length
            self.groups = [(n, [b for b in self.blocks if b.context.shape[1] == n]) for n in sorted(set(lengths))]

    def _to_x0(self, x: torch.Tensor, sigma: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if self.model.prediction == "v":
            return x / (sigma**2 + 1.0) - out * sigma / (sigma**2 + 1.0) ** 0.5
        return x - out * sigma

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.before_eval()
        model = self.model
        s, t = sigma_and_timestep(model.sampling, sigma, x.device)
        x_in = (x / (s**2 + 1.0) ** 0.5).to(model.dtype)
        outs: dict[int, torch.Tensor] = {}
        for length, blocks in self.groups:
            sizes = [b.rows.stop - b.rows.start for b in blocks]
            ctx = torch.cat([_tile_to(b.context, length).expand(n, -1, -1) for b, n in zip(blocks, sizes, strict=True)])
            ys = [b.y.expand(n, -1) for b, n in zip(blocks, sizes, strict=True) if b.y is not None]
            y = torch.cat(ys).to(model.dtype) if ys else None
            total = sum(sizes)
            rows = torch.cat([x_in[b.rows] if b.concat is None else torch.cat([x_in[b.rows], b.concat.to(x_in.dtype)], 1)
                              for b in blocks])
            padded = 1 << (total - 1).bit_length() if self.pad else total
            if padded > total:
                # a few fixed UNet batch sizes (powers of two), each with its CUDA graph prepared up front,
                # instead of a new bucket per job count; the extra rows repeat the last and are dropped
                rows, ctx = _pad_rows(rows, padded), _pad_rows(ctx, padded)
                y = None if y is None else _pad_rows(y, padded)
            out = model.unet(rows, t.expand(padded), ctx.to(model.dtype), y).float()[:total]
            x0 = self._to_x0(torch.cat([x[b.rows] for b in blocks]), s, out)
            for b, part in zip(blocks, x0.split(sizes), strict=True):
                outs[id(b)] = part
        negs, poss = [], []
        for j, _m in enumerate(self.members):
            pos = _average([outs[id(b)] for b in self.blocks if b.owner == j and b.side == "pos"])
            neg = pos if self.skip_negative[j] else _average(
                [outs[id(b)] for b in self.blocks if b.owner == j and b.side == "neg"])
            poss.append(pos)
            negs.append(neg)
        neg_all, pos_all = torch.cat(negs), torch.cat(poss)
        if self.keep_uncond:
            self.last_uncond = neg_all
        return neg_all + (pos_all - neg_all) * self.cfg


def _pad_rows(a: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.cat([a, a[-1:].expand(rows - a.shape[0], *a.shape[1:])])


def run_batch(members: Sequence[_Member], pad: bool = False) -> None:
    """Sample stacked members as one loop and fulfil their futures (results, or each member's own error)."""
    start = 0
    for m in members:
        m.rows = slice(start, start + m.prep.rows)
        start += m.prep.rows
    first = members[0].prep
    model = first.model
    total = len(first.sigmas) - 1

    def leave(m: _Member, exc: BaseException) -> None:
        m.alive = False
        m.future.set_exception(exc)

    def live() -> list[_Member]:
        alive = [m for m in members if m.alive]
        if not alive:
            raise _Abandoned
        return alive

    def check_all() -> None:
        for m in live():
            if m.check_cancelled is not None:
                try:
                    m.check_cancelled()
                except Exception as exc:  # this job leaves; the others go on
                    leave(m, exc)
        live()

    def step(i: int, denoised: torch.Tensor, _x: torch.Tensor) -> None:
        for m in live():
            try:
                if m.on_step is not None:
                    m.on_step(i, total, denoised[m.rows])
                if m.check_cancelled is not None:
                    m.check_cancelled()
            except Exception as exc:
                leave(m, exc)
        live()

    try:
        with torch.no_grad():
            denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = BatchedGuidedDenoiser(
                model, members, check_all, pad, keep_uncond=first.sampler_name in CFG_PP_SAMPLERS)
            if first.mask is not None:
                denoiser = MaskedDenoiser(denoiser, torch.cat([m.prep.mask for m in members if m.prep.mask is not None]),
                                          torch.cat([m.prep.scaled for m in members]),
                                          torch.cat([m.prep.noise for m in members]), mask_fn(first))
            x = torch.cat([m.prep.x for m in members])
            env = _BatchEnv(seed=first.seed, callback=step, members=members, flow=model.prediction == "flow",
                            model_sampling=model.sampling)
            out = first.sampler(denoiser, x, first.sigmas, env)
            for m in members:
                if m.alive:
                    m.alive = False
                    m.future.set_result(finish_sample(m.prep, out[m.rows]))
    except _Abandoned:
        pass
    except BaseException as exc:
        oom = isinstance(exc, torch.cuda.OutOfMemoryError)
        if not oom:
            log.warning("a batch of %d KSampler calls failed; they run alone instead", len(members), exc_info=True)
        for m in members:
            if m.alive:  # each member gets its own error object (the node wrapper stamps its node id)
                leave(m, ResourceExhaustedError(f"out of GPU memory while sampling a batch of {len(members)}: {exc}")
                      if oom else _RunAlone())


# ---------------------------------------------------------------------------------------------------
# the gather window


@dataclass
class _Gather:
    key: Hashable
    members: list[_Member] = field(default_factory=list)
    full: threading.Event = field(default_factory=threading.Event)


@dataclass
class BatcherStats:
    batches: int = 0  # batched loops run (2+ calls each)
    batched_calls: int = 0  # calls that ran in one of them
    solo_calls: int = 0  # calls that ran alone (window off, or nobody joined)
    largest: int = 0
    sizes: list[int] = field(default_factory=list)


def compat_key(model_key: Hashable, prep: PreparedSample) -> Hashable:
    """Calls with equal keys can share every UNet forward."""
    model = prep.model
    return (model_key, str(model.device), str(model.dtype), model.prediction, model.adm, model.mask_strength,
            prep.sampler_name,
            tuple(prep.sigmas.tolist()), tuple(prep.x.shape[1:]), prep.mask is not None)


class SamplingBatcher:
    """Process-wide: gathers compatible KSampler calls for a short window and samples them as one batch."""

    def __init__(self, window_s: float, max_jobs: int = DEFAULT_MAX, *, solo_when_idle: bool = False,
                 pad: bool = False) -> None:
        """`solo_when_idle`: a call that finds no other sampling loop running starts at once instead of
        waiting out the window (only calls arriving while the GPU is busy gather); `pad`: UNet batches
        padded to powers of two (see BatchedGuidedDenoiser)."""
        self.config = BatchingSettings(batch_window_ms=window_s * 1000.0, batch_max=max_jobs)
        self.solo_when_idle = solo_when_idle
        self.pad = pad
        self.stats = BatcherStats()
        self._open: dict[Hashable, _Gather] = {}
        self._lock = threading.Lock()
        self._sampling = 0  # sampling loops running now (alone or batched)

    def sample(self, model_key: Hashable, prep: PreparedSample, *, job: str = "", on_step: StepHook | None = None,
               check_cancelled: Callable[[], None] | None = None) -> dict[str, Any]:
        """Sample `prep`, batched with compatible calls that arrive within the window; blocks until done."""
        if not self.config.batching_enabled or not prep.batchable:
            return self._solo(prep, on_step, check_cancelled)
        key = compat_key(model_key, prep)
        member = _Member(prep, job, on_step, check_cancelled)
        with self._lock:
            idle = self.solo_when_idle and self._sampling == 0 and key not in self._open
        if idle:
            return self._solo(prep, on_step, check_cancelled)
        with self._lock:
            gather = self._open.get(key)
            leader = gather is None
            if gather is None:
                gather = self._open[key] = _Gather(key)
            gather.members.append(member)
            if len(gather.members) >= self.config.batch_max:
                del self._open[key]
                gather.full.set()
        if not leader:
            return self._wait(member)
        gather.full.wait(self.config.batch_window_s)
        with self._lock:
            if self._open.get(key) is gather:
                del self._open[key]
            members = list(gather.members)
        if len(members) == 1:
            return self._solo(prep, on_step, check_cancelled)
        with self._lock:
            self.stats.batches += 1
            self.stats.batched_calls += len(members)
            self.stats.largest = max(self.stats.largest, len(members))
            self.stats.sizes.append(len(members))
        log.info("batched %d KSampler calls", len(members),
                 extra=log_fields(jobs=[m.job for m in members], rows=sum(m.prep.rows for m in members),
                                  sampler=prep.sampler_name, steps=len(prep.sigmas) - 1))
        # a runner thread of its own, so a cancelled leader raises at once like every other member
        threading.Thread(target=self._run_batch, args=(members,), name="comfymesh-batch", daemon=True).start()
        return self._wait(member)

    def _run_batch(self, members: list[_Member]) -> None:
        with self._lock:
            self._sampling += 1
        try:
            run_batch(members, self.pad)
        finally:
            with self._lock:
                self._sampling -= 1

    def _wait(self, member: _Member) -> dict[str, Any]:
        try:
            return member.future.result()
        except _RunAlone:
            return self._solo(member.prep, member.on_step, member.check_cancelled)

    def _solo(self, prep: PreparedSample, on_step: StepHook | None,
              check_cancelled: Callable[[], None] | None) -> dict[str, Any]:
        with self._lock:
            self.stats.solo_calls += 1
            self._sampling += 1
        try:
            return run_prepared(prep, on_step, check_cancelled)
        finally:
            with self._lock:
                self._sampling -= 1


_batcher: SamplingBatcher | None = None
_batcher_lock = threading.Lock()


def get_batcher() -> SamplingBatcher:
    """The process-wide batcher (configured from the settings on first use)."""
    global _batcher
    with _batcher_lock:
        if _batcher is None:
            settings = get_settings()
            _batcher = SamplingBatcher(settings.batch_window_s, settings.batch_max,
                                       solo_when_idle=settings.batch_idle_start, pad=settings.batch_pad)
        return _batcher


def set_batcher(batcher: SamplingBatcher | None) -> None:
    """Replace the process-wide batcher (tests; None: configure again from the settings)."""
    global _batcher
    with _batcher_lock:
        _batcher = batcher


def sample_latent(model: SamplingModel, model_key: Hashable, *, job: str = "", on_step: StepHook | None = None,
                  check_cancelled: Callable[[], None] | None = None, **kwargs: Any) -> dict[str, Any]:
    """ksampler.sample_latent through the process-wide batcher (`kwargs` as there)."""
    prep = prepare_sample(model, **kwargs)
    if isinstance(prep, dict):
        return prep
    return get_batcher().sample(model_key, prep, job=job, on_step=on_step, check_cancelled=check_cancelled)
