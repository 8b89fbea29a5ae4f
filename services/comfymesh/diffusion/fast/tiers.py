"""Shape buckets and `FastModule`: a tensor function served by its fastest ready tier per bucket.

Tiers: eager, graphed (a CUDA graph of the eager function) and compiled (torch.compile, CUDA-graphed
when graphs are on); `builder` builds them in the background while calls go on eagerly.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from comfymesh.config import get_settings
from comfymesh.config.fast_path import FastPathSettings
from comfymesh.diffusion.fast import builder
from comfymesh.diffusion.fast.builder import CAPTURE, COMPILE
from comfymesh.diffusion.fast.compile_cache import compile_cache_dir, load_compile_cache, save_compile_cache

log = logging.getLogger(__name__)

BucketKey = tuple[Any, ...]
_launch_lock = threading.RLock()
"""Held while a fast bucket replays and while a CUDA graph is captured, so a capture never sees
another thread's UNet launches and two jobs never share static buffers at once."""
_build_lock = threading.Lock()
"""One bucket builds at a time: inductor's benchmarking in one build must not run while another build
captures a CUDA graph (seen on an H100: "operation not permitted when stream is capturing")."""


@dataclass
class Bucket:
    """One shape bucket and its fastest variant so far (`tier`): eager, graphed (a CUDA graph of the eager
    module, captured in about a second) or compiled (torch.compile, CUDA-graphed when graphs are on)."""

    key: BucketKey
    ready: threading.Event = field(default_factory=threading.Event)  # a fast tier is in place, or none can be
    done: threading.Event = field(default_factory=threading.Event)  # every tier built or given up
    tier: str = "eager"
    failed: str | None = None
    fn: Callable[..., torch.Tensor] | None = None
    graph: Any = None
    static_in: list[torch.Tensor | None] = field(default_factory=list)
    static_out: torch.Tensor | None = None
    build_s: float = 0.0  # until the first fast tier
    compile_s: float = 0.0
    calls: int = 0


def bucket_key(*args: torch.Tensor | None) -> BucketKey:
    """Shapes of every input (None for an absent one), then the first input's dtype and device."""
    first = args[0]
    assert first is not None
    return (*(None if a is None else tuple(a.shape) for a in args), first.dtype, str(first.device))


class FastModule:
    """A tensor function with per-bucket graphed / compiled variants; eager until a variant is ready.

    `eager` serves calls until a bucket has a fast tier; `fast` is what gets CUDA-graphed and compiled (the
    same function, or one over a copy of the module in a layout that suits the compiler). `graphed_tier`
    False skips the CUDA graph of the eager `fast` (worth it only where launches, not kernels, dominate).
    `settings` (default: the process's) gives what `compile`, `backend`, `mode` and `graphs` leave open.
    `lock` (a cached model's lock, which LoRA views take while they swap weights on the shared module) is
    held around every CUDA-graph capture, so that a graph never records another job's swapped weights."""

    def __init__(self, name: str, eager: Callable[..., torch.Tensor], fast: Callable[..., torch.Tensor],
                 device: torch.device, *, compile: bool | None = None, backend: str | None = None,
                 mode: str | None = None, graphs: bool | None = None, graphed_tier: bool = True,
                 background: bool = True, settings: FastPathSettings | None = None,
                 lock: contextlib.AbstractContextManager[Any] | None = None) -> None:
        self.name = name
        self._eager = eager
        self._fast = fast
        self.device = device
        switches = settings or get_settings()
        self.compile = switches.compile_enabled(device.type) if compile is None else compile
        self.backend = backend or switches.compile_backend
        self.mode = mode or switches.compile_mode
        self.graphs = device.type == "cuda" and (switches.cuda_graphs if graphs is None else graphs)
        self.graphed_tier = graphed_tier and self.graphs
        self.background = background
        self.buckets: dict[BucketKey, Bucket] = {}
        self._lock = threading.Lock()
        self._capture_lock = lock or contextlib.nullcontext()
        if self.compile:
            compile_cache_dir()

    def _prepare(self) -> None:
        """Called on the builder thread before a bucket's first build (a subclass's one-time setup)."""

    def _channels_last(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """The first input in channels-last on CUDA (the fast modules' layout)."""
        if self.device.type != "cuda":
            return args
        return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])

    def eager(self, *args: torch.Tensor | None) -> torch.Tensor:
        if self.device.type == "cuda":
            with _launch_lock:
                return self._eager(*args)
        return self._eager(*args)

    def __call__(self, *args: torch.Tensor | None) -> torch.Tensor:
        if not self.compile and not self.graphs:
            return self.eager(*args)
        builder.note_call()
        bucket = self.buckets.get(bucket_key(*args))
        if bucket is None:
            bucket = self.start(*args)
        if bucket.tier != "eager":
            bucket.calls += 1
            return self._run(bucket, args)
        return self.eager(*args)

    def start(self, *args: torch.Tensor | None, compile: bool = True) -> Bucket:
        """Begin building the bucket of these inputs (a copy of them is the capture's input); idempotent.
        `compile=False` stops at the graphed tier (a bucket seldom used is not worth minutes of compiling)."""
        key = bucket_key(*args)
        with self._lock:
            bucket = self.buckets.get(key)
            if bucket is not None:
                return bucket
            bucket = Bucket(key)
            self.buckets[key] = bucket
        copies = [None if a is None else a.detach().clone() for a in args]
        began = time.perf_counter()
        steps: list[tuple[int, Callable[[], None]]] = []
        if self.graphed_tier:
            steps.append((CAPTURE, lambda: self._build_tier(bucket, copies, compiled=False, began=began)))
        compiling = self.compile and compile
        if compiling:
            steps.append((COMPILE, lambda: self._build_tier(bucket, copies, compiled=True, began=began)))
        steps.append((COMPILE if compiling else CAPTURE, lambda: self._finish(bucket, began)))
        for priority, work in steps:
            if self.background:
                builder.submit(priority, work)
            else:
                work()
        return bucket

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every started bucket has built all its tiers (or given up); True if they have."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for bucket in list(self.buckets.values()):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not bucket.done.wait(left):
                return False
        return True

    def _build_tier(self, bucket: Bucket, args: list[Any], *, compiled: bool, began: float) -> None:
        tier = "compiled" if compiled else "graphed"
        start = time.perf_counter()
        interval = sys.getswitchinterval()
        if compiled:
            # tracing holds the GIL for seconds: hand it over often so serving threads keep launching steps
            sys.setswitchinterval(min(interval, 0.0005))
        try:
            with _build_lock, torch.no_grad():
                self._prepare()
                fn: Callable[..., torch.Tensor] = self._fast
                if compiled:
                    load_compile_cache()
                    fn = torch.compile(self._fast, backend=self.backend, mode=self.mode, dynamic=False)
                static = [a.clone() if a is not None else None for a in self._channels_last(tuple(args))]
                if self.device.type == "cuda":
                    side = torch.cuda.Stream(self.device)
                    side.wait_stream(torch.cuda.current_stream(self.device))
                    with torch.cuda.stream(side):
                        for _ in range(2):  # compiles on the first call; the second settles allocations
                            fn(*static)
                    side.synchronize()
                else:
                    fn(*static)
                graph, out = None, None
                if self.graphs:
                    try:
                        graph, out = self._capture(fn, static)
                    except Exception as exc:
                        if not compiled or bucket.tier != "eager":
                            raise
                        # a model whose call copies from the host (diffusers' Chroma embeds its guidance from
                        # a CPU tensor) cannot be graphed: compiled alone it still beats eager
                        graph, out = None, None
                        bucket.failed = f"CUDA graph: {type(exc).__name__}: {exc}"
                        log.warning("fast path bucket %s %s: no CUDA graph, compiled without one: %s", self.name,
                                    bucket.key[0], exc)
                with _launch_lock:  # swap while no call replays the previous tier
                    bucket.fn, bucket.graph, bucket.static_in, bucket.static_out = fn, graph, static, out
                    bucket.tier = tier
            if compiled:
                save_compile_cache()
                bucket.compile_s = time.perf_counter() - start
            if not bucket.ready.is_set():
                bucket.build_s = time.perf_counter() - began
                bucket.ready.set()
            log.info("fast path bucket %s %s: %s tier ready in %.1f s", self.name, bucket.key[0], tier,
                     time.perf_counter() - start)
        except Exception as exc:  # the bucket keeps whatever tier it had
            bucket.failed = f"{tier}: {type(exc).__name__}: {exc}"
            log.warning("fast path bucket %s %s: %s tier failed, staying %s: %s", self.name, bucket.key[0], tier,
                        bucket.tier, exc)
        finally:
            sys.setswitchinterval(interval)

    def _capture(self, fn: Callable[..., torch.Tensor], static: list[torch.Tensor | None],
                 ) -> tuple[Any, torch.Tensor]:
        graph = torch.cuda.CUDAGraph()
        with self._capture_lock, _launch_lock:
            torch.cuda.synchronize(self.device)
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                out = fn(*static)
            torch.cuda.synchronize(self.device)
        return graph, out

    def _finish(self, bucket: Bucket, began: float) -> None:
        bucket.ready.set()
        bucket.done.set()
        log.info("fast path bucket %s %s done: tier %s after %.1f s", self.name, bucket.key[0], bucket.tier,
                 time.perf_counter() - began)

    def _run(self, bucket: Bucket, args: tuple[torch.Tensor | None, ...]) -> torch.Tensor:
        with _launch_lock:
            if bucket.graph is None:
                assert bucket.fn is not None
                return bucket.fn(*self._channels_last(args))
            assert bucket.static_out is not None
            for static, value in zip(bucket.static_in, args, strict=True):
                if static is not None and value is not None:
                    static.copy_(value)
            bucket.graph.replay()
            return bucket.static_out.clone()

    def stats(self) -> list[dict[str, Any]]:
        return [{"module": self.name, "shape": list(b.key[0]), "tier": b.tier, "ready": b.ready.is_set(),
                 "failed": b.failed, "build_s": round(b.build_s, 2), "compile_s": round(b.compile_s, 2),
                 "calls": b.calls}
                for b in self.buckets.values()]
