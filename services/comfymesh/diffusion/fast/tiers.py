"""The fast path: channels-last fp16 UNet and the VAE's decode, compiled and CUDA-graphed per shape bucket.

A *bucket* is one set of input shapes of a module (for the UNet: batch after CFG, latent size, context
length, ADM width, dtype; for the decoder: the latent's). The first call of a new bucket runs eagerly and
queues the bucket's fast tiers on one background builder thread: for the UNet first a CUDA graph of the
eager channels-last UNet ("graphed", captured in about a second, ~3x eager's step rate), then for both
torch.compile, CUDA-graphed too ("compiled", minutes cold, seconds from the persisted cache). Calls use
the best tier in place, so compilation never blocks serving and a restarted stage serves graphed steps
within seconds while it recompiles. Captures of new buckets go before compilations. A failed tier leaves
the bucket on the tier it had (logged once).

Compiled artifacts persist under $COMFYMESH_HOME/cache/torch-compile: inductor's on-disk caches
(TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR) plus torch's "mega-cache" bundle, saved after every build
and loaded once per process before its first compilation, so a restarted stage rebuilds a bucket from
cache (seconds) instead of from scratch (minutes).

`StepReporter` reports progress and previews of a sampling loop from CUDA events: the loop never waits
on the device except to keep at most `max_ahead` steps queued (so cancellation stays prompt).

Switches (environment): COMFYMESH_FAST_PATH (auto | 1 | 0; auto = on for CUDA devices),
COMFYMESH_COMPILE (1 | 0; 0 = CUDA graphs of the eager UNet only), COMFYMESH_COMPILE_BACKEND
(default inductor), COMFYMESH_COMPILE_MODE (default "default"), COMFYMESH_CUDA_GRAPHS (1 | 0),
COMFYMESH_WARMUP_MANIFEST (a JSON file of buckets to build at stage start, see `warmup_from_manifest`),
COMFYMESH_COMPILE_IDLE_S / COMFYMESH_COMPILE_MAX_DEFER_S (compile in a quiet moment, see `_wait_until_idle`).
"""

from __future__ import annotations

import collections
import copy
import io
import itertools
import json
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from comfymesh.config import env_flag
from comfymesh.diffusion.latents import vae_codec

log = logging.getLogger(__name__)

FAST_ENV = "COMFYMESH_FAST_PATH"
COMPILE_ENV = "COMFYMESH_COMPILE"
BACKEND_ENV = "COMFYMESH_COMPILE_BACKEND"
MODE_ENV = "COMFYMESH_COMPILE_MODE"
GRAPHS_ENV = "COMFYMESH_CUDA_GRAPHS"
MANIFEST_ENV = "COMFYMESH_WARMUP_MANIFEST"
IDLE_ENV = "COMFYMESH_COMPILE_IDLE_S"
MAX_DEFER_ENV = "COMFYMESH_COMPILE_MAX_DEFER_S"
MEGA_CACHE_FILE = "mega_cache.bin"

BucketKey = tuple[Any, ...]
_launch_lock = threading.RLock()
"""Held while a fast bucket replays and while a CUDA graph is captured, so a capture never sees
another thread's UNet launches and two jobs never share static buffers at once."""
_build_lock = threading.Lock()
"""One bucket builds at a time: inductor's benchmarking in one build must not run while another build
captures a CUDA graph (seen on an H100: "operation not permitted when stream is capturing")."""


def fast_enabled(device: torch.device) -> bool:
    """Whether the fast path is on for `device` ($COMFYMESH_FAST_PATH; auto = CUDA only)."""
    return env_flag(FAST_ENV, device.type == "cuda")


def compile_enabled(device: torch.device) -> bool:
    """Whether the fast path compiles on `device` ($COMFYMESH_COMPILE; default on for CUDA devices)."""
    return fast_enabled(device) and env_flag(COMPILE_ENV, device.type == "cuda")


# ---------------------------------------------------------------------------------------------------
# persisted compile caches

_cache_state: dict[str, Any] = {"dir": None, "loaded": False}
_cache_lock = threading.Lock()


def compile_cache_dir(home: Path | None = None) -> Path | None:
    """Point inductor's caches at <home>/cache/torch-compile (once; cheap, so stage start-up may call it)."""
    with _cache_lock:
        if _cache_state["dir"] is not None:
            return Path(_cache_state["dir"])
        if home is None:
            env_home = os.environ.get("COMFYMESH_HOME")
            if not env_home:
                return None
            home = Path(env_home)
        root = Path(home) / "cache" / "torch-compile"
        root.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor"))
        os.environ.setdefault("TRITON_CACHE_DIR", str(root / "triton"))
        _cache_state["dir"] = str(root)
        return root


def load_compile_cache() -> None:
    """Load the saved mega-cache bundle once, right before the first compilation (it imports inductor,
    which takes seconds: never on the start-up path)."""
    root = compile_cache_dir()
    with _cache_lock:
        if root is None or _cache_state["loaded"]:
            return
        _cache_state["loaded"] = True
        mega = root / MEGA_CACHE_FILE
        loader = getattr(torch.compiler, "load_cache_artifacts", None)
        if not mega.is_file() or loader is None:
            return
        try:
            loader(mega.read_bytes())
            log.info("loaded compile cache %s (%d bytes)", mega, mega.stat().st_size)
        except Exception as exc:  # a stale or foreign bundle must never stop serving
            log.warning("ignoring compile cache %s: %s", mega, exc)


def save_compile_cache() -> Path | None:
    """Write torch's mega-cache bundle next to the inductor cache (atomic replace)."""
    root = _cache_state["dir"]
    saver = getattr(torch.compiler, "save_cache_artifacts", None)
    if root is None or saver is None:
        return None
    try:
        result = saver()
    except Exception as exc:
        log.warning("could not save the compile cache: %s", exc)
        return None
    if not result:
        return None
    data = result[0]
    path = Path(root) / MEGA_CACHE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------------------------------
# the bucketed fast UNet


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


class _Builder:
    """One background thread builds every bucket's tiers, quick graph captures before slow compiles, so a
    new bucket never waits behind another bucket's compilation for its first fast tier."""

    def __init__(self) -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, Callable[[], None]]] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, priority: int, work: Callable[[], None]) -> None:
        self._queue.put((priority, next(self._seq), work))
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="comfymesh-compile", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            priority, _, work = self._queue.get()
            if priority == COMPILE:
                _wait_until_idle()
            try:
                work()
            except Exception:  # one bad build must not stop the builder for every other bucket
                log.exception("fast path build step failed")


def _wait_until_idle() -> None:
    """Hold a compilation back until no UNet call ran for COMFYMESH_COMPILE_IDLE_S (default 2 s), at most
    COMFYMESH_COMPILE_MAX_DEFER_S (default 300 s): tracing holds the GIL for seconds at a time, and jobs
    then crawl, so it goes into a quiet moment (after a restart, the first jobs run on the graphed tier)."""
    idle_s = float(os.environ.get(IDLE_ENV) or 2.0)
    give_up = time.monotonic() + float(os.environ.get(MAX_DEFER_ENV) or 300.0)
    while time.monotonic() < give_up and time.monotonic() - _activity["last_call"] < idle_s:
        time.sleep(0.2)


_activity = {"last_call": 0.0}
_builder = _Builder()
CAPTURE, COMPILE = 0, 1  # builder priorities


class FastModule:
    """A tensor function with per-bucket graphed / compiled variants; eager until a variant is ready.

    `eager` serves calls until a bucket has a fast tier; `fast` is what gets CUDA-graphed and compiled (the
    same function, or one over a copy of the module in a layout that suits the compiler). `graphed_tier`
    False skips the CUDA graph of the eager `fast` (worth it only where launches, not kernels, dominate)."""

    def __init__(self, name: str, eager: Callable[..., torch.Tensor], fast: Callable[..., torch.Tensor],
                 device: torch.device, *, compile: bool | None = None, backend: str | None = None,
                 mode: str | None = None, graphs: bool | None = None, graphed_tier: bool = True,
                 background: bool = True) -> None:
        self.name = name
        self._eager = eager
        self._fast = fast
        self.device = device
        cuda = device.type == "cuda"
        self.compile = env_flag(COMPILE_ENV, cuda) if compile is None else compile
        self.backend = backend or os.environ.get(BACKEND_ENV) or "inductor"
        self.mode = mode or os.environ.get(MODE_ENV) or "default"
        self.graphs = cuda and (env_flag(GRAPHS_ENV, True) if graphs is None else graphs)
        self.graphed_tier = graphed_tier and self.graphs
        self.background = background
        self.buckets: dict[BucketKey, Bucket] = {}
        self._lock = threading.Lock()
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
        _activity["last_call"] = time.monotonic()
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
                _builder.submit(priority, work)
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
                    graph = torch.cuda.CUDAGraph()
                    with _launch_lock:
                        torch.cuda.synchronize(self.device)
                        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                            out = fn(*static)
                        torch.cuda.synchronize(self.device)
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


class FastUNet(FastModule):
    """The UNet as a UNetFn (x, t, context, y), channels-last on CUDA, graphed then compiled per bucket."""

    def __init__(self, unet: nn.Module, device: torch.device, **options: Any) -> None:
        if device.type == "cuda":
            unet.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.unet = unet
        super().__init__("unet", self._eager_unet, self._forward, device, **options)

    # the plain module call (also what gets compiled)
    def _forward(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor,
                 y: torch.Tensor | None) -> torch.Tensor:
        out: torch.Tensor = self.unet(x, t, encoder_hidden_states=ctx, class_labels=y, return_dict=False)[0]
        return out

    def _eager_unet(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return self._forward(*self._channels_last((x, t, ctx, y)))


class FastDecoder(FastModule):
    """A VAE's decode (latent in the VAE's dtype -> pixels in [-1, 1]), compiled and CUDA-graphed per
    bucket. Measured on an H100 (512², bf16): eager 22 ms, compiled + graphed 7.7 ms. The compiled
    variant runs a channels-last copy of the VAE, made by the first build: in eager, channels-last is
    slower (28 ms, its group norms), so eager calls keep the original; and a CUDA graph of that eager copy
    would gain nothing (its time is in kernels, not launches), so there is no graphed tier."""

    def __init__(self, vae: Any, device: torch.device, **options: Any) -> None:
        self.vae = vae
        self._fast_vae: Any = None
        super().__init__("vae-decode", self._decode, self._fast_decode, device, graphed_tier=False, **options)

    def eager(self, *args: torch.Tensor | None) -> torch.Tensor:
        # not under the launch lock (as before there was a fast decoder): 20+ ms of decoding would hold up
        # every other job's UNet launches
        return self._eager(*args)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.vae.decode(z).sample
        return out

    def _prepare(self) -> None:
        if self._fast_vae is None:  # on the builder thread: the only one that builds
            self._fast_vae = self.vae
            if self.device.type == "cuda":
                self._fast_vae = copy.deepcopy(self.vae).to(memory_format=torch.channels_last)

    def _fast_decode(self, z: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self._fast_vae.decode(z).sample
        return out


def unet_inputs(batch: int, height: int, width: int, context_dim: int, dtype: torch.dtype, device: torch.device,
                adm: int | None = None, cfg: bool = True, context_len: int = 77,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Dummy UNet inputs of the bucket that a KSampler of this size would use (CFG doubles the batch)."""
    n = batch * (2 if cfg else 1)
    x = torch.randn(n, 4, height // 8, width // 8, device=device).to(dtype)
    t = torch.full((n,), 500.0, device=device)
    ctx = torch.randn(n, context_len, context_dim, device=device).to(dtype)
    y = None if adm is None else torch.randn(n, adm, device=device).to(dtype)
    return x, t, ctx, y


def decoder_input(batch: int, height: int, width: int, channels: int, dtype: torch.dtype,
                  device: torch.device) -> torch.Tensor:
    """A dummy latent of the decoder bucket for `batch` images of this size."""
    return torch.randn(batch, channels, height // 8, width // 8, device=device).to(dtype)


@dataclass
class WarmTarget:
    """What a warm-up manifest entry builds buckets of: a checkpoint's sampling model and its decoder."""

    model: Any  # ksampler.SamplingModel (not imported: that module imports this one)
    decoder: FastDecoder | None
    latent_channels: int = 4


def warmup_from_manifest(load: Callable[[str], WarmTarget], manifest: Path | None = None) -> list[str]:
    """Start building the buckets listed in a JSON manifest: [{"ckpt", "width", "height", "batch", "cfg",
    "compile"}] ("compile": false = graphed tier only; "batch" counts latents, so a batched KSampler of
    n jobs × 1 latent with CFG is "batch": n, padded to a power of two). Each entry starts a UNet bucket
    and, where the checkpoint has a fast decoder, a VAE decoder bucket (compiled only with "compile").

    `load(ckpt_name)` returns the checkpoint's WarmTarget (its model's unet must be a FastUNet).
    Returns the names it started; errors are logged, never raised (serving goes on).
    """
    path = manifest or (Path(os.environ[MANIFEST_ENV]) if os.environ.get(MANIFEST_ENV) else None)
    if path is None or not path.is_file():
        return []
    started = []
    try:
        entries = json.loads(path.read_text())
    except ValueError as exc:
        log.warning("warm-up manifest %s is not JSON: %s", path, exc)
        return []
    for entry in entries:
        try:
            target = load(entry["ckpt"])
            model = target.model
            if not isinstance(model.unet, FastUNet):
                continue
            batch, height, width = int(entry.get("batch", 1)), int(entry.get("height", 512)), int(entry.get("width", 512))
            compile_it = bool(entry.get("compile", True))
            model.unet.start(*unet_inputs(batch, height, width, model.context_dim, model.dtype, model.device,
                                          model.adm, bool(entry.get("cfg", True))), compile=compile_it)
            decoder = target.decoder
            if decoder is not None:  # without "compile" its bucket is made to stay eager (no build later)
                dtype = next(decoder.vae.parameters()).dtype
                decoder.start(decoder_input(min(batch, vae_codec.GPU_CHUNK), height, width, target.latent_channels,
                                            dtype, decoder.device), compile=compile_it)
            started.append(f"{entry['ckpt']}@{width}x{height}x{batch}")
        except Exception as exc:
            log.warning("warm-up entry %s failed: %s", entry, exc)
    return started


# ---------------------------------------------------------------------------------------------------
# progress and previews without a per-step host sync


@dataclass
class _Pending:
    step: int
    total: int
    event: Any
    rgb: torch.Tensor | None


class StepReporter:
    """Progress/preview callback for a sampling loop that never forces a sync per step on CUDA.

    On a CUDA device each step records an event (and starts a non-blocking copy of the small preview
    into pinned memory); steps are reported once their event has completed. At most `max_ahead` steps
    may be queued ahead of the GPU, then the loop waits for the oldest one. On a CPU everything is
    reported immediately.
    """

    def __init__(self, report_progress: Callable[[int, int], None],
                 report_preview: Callable[[bytes, str], None] | None, rgb: Callable[[torch.Tensor], torch.Tensor],
                 device: torch.device, max_ahead: int = 2) -> None:
        self.report_progress = report_progress
        self.report_preview = report_preview
        self.rgb = rgb
        self.device = device
        self.max_ahead = max_ahead
        self.pending: collections.deque[_Pending] = collections.deque()

    def __call__(self, i: int, total: int, denoised: torch.Tensor) -> None:
        if self.device.type != "cuda":
            self._emit(i, total, self.rgb(denoised) if self.report_preview else None)
            return
        rgb = None
        if self.report_preview is not None:
            small = self.rgb(denoised)
            rgb = torch.empty(small.shape, dtype=small.dtype, pin_memory=True)
            rgb.copy_(small, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending.append(_Pending(i, total, event, rgb))
        self.drain(block=False)

    def drain(self, block: bool) -> None:
        while self.pending:
            head = self.pending[0]
            if not (block or len(self.pending) > self.max_ahead or head.event.query()):
                return
            head.event.synchronize()
            self.pending.popleft()
            self._emit(head.step, head.total, head.rgb)

    def finish(self) -> None:
        self.drain(block=True)

    def _emit(self, i: int, total: int, rgb: torch.Tensor | None) -> None:
        self.report_progress(i + 1, total)
        if self.report_preview is not None and rgb is not None:
            from PIL import Image

            buf = io.BytesIO()
            Image.fromarray(rgb.cpu().numpy(), "RGB").save(buf, format="JPEG", quality=95)
            self.report_preview(buf.getvalue(), "JPEG")
