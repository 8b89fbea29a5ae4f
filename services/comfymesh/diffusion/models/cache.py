"""Weights loaded once and kept resident, keyed by file digest, evicted LRU within a memory budget.

Checkpoints, the split loaders' files (diffusion models, text encoder sets, VAEs), LoRA files and
LoRA-patched weight sets share one budget. A LoRA never
changes cached base weights: patched tensors live in their own entry and are swapped in per call.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from comfymesh.catalog.files import file_digest
from comfymesh.config import get_settings
from comfymesh.config.diffusion import DiffusionSettings
from comfymesh.config.fast_path import FastPathSettings
from comfymesh.contracts.errors import ModelError, NodeInputError
from comfymesh.diffusion.families import registry as families
from comfymesh.diffusion.families.loading import compute_dtype, host_build
from comfymesh.diffusion.fast.decoder import FastDecoder
from comfymesh.diffusion.fast.denoiser import FastDenoiser
from comfymesh.diffusion.fast.unet import FastUNet
from comfymesh.diffusion.latents.formats import LatentFormat, for_family
from comfymesh.diffusion.memory import offload_plan
from comfymesh.diffusion.memory.encoders import encoders_leave_device
from comfymesh.diffusion.memory.fit import check_fit, resident_bytes, tensor_bytes
from comfymesh.diffusion.memory.fp8_matmul import Fp8Kernel, device_capability, fp8_kernel
from comfymesh.diffusion.memory.held import HeldMemory
from comfymesh.diffusion.memory.host import check_host_fit, default_host_budget, host_memory
from comfymesh.diffusion.memory.split_placement import place_split, split_of
from comfymesh.diffusion.memory.split_plan import split
from comfymesh.diffusion.memory.streaming import offload, streamer_of
from comfymesh.diffusion.models import flow_lora
from comfymesh.diffusion.models import lora as lora_mod
from comfymesh.diffusion.models.checkpoint import (
    WEIGHT_DTYPES,
    CheckpointParts,
    load_checkpoint,
    load_family_encoders,
    load_text_encoders,
    load_unet_file,
    load_vae_file,
)
from comfymesh.diffusion.models.convert import Placement
from comfymesh.diffusion.models.fp8_weights import set_fp8_kernel
from comfymesh.diffusion.models.recognise import Recognition
from comfymesh.diffusion.models.split_files import assign_encoders
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.sampling.guidance import ResidualUNetFn, UNetFn
from comfymesh.diffusion.sampling.ksampler import SamplingModel
from comfymesh.diffusion.sampling.model_sampling import ModelSampling
from comfymesh.diffusion.text.encode import ClipRunner, Runner, TextEncoders

log = logging.getLogger(__name__)

DEFAULT_CPU_BUDGET = 16 * 2**30

LoraSpec = tuple[Path, float]  # (file, strength)
# the entries list() shows and unload() drops by name: whole checkpoints and the split loaders' model files
RESIDENT_KINDS = ("checkpoint", "diffusion_model", "text_encoders")


def default_device(settings: DiffusionSettings) -> torch.device:
    """COMFYMESH_DEVICE, else CUDA when there is one, else the CPU."""
    if settings.device:
        return torch.device(settings.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _indexed(device: torch.device) -> torch.device:
    """`cuda` as the card it means (`cuda:N`), to compare devices."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def module_bytes(*modules: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for m in modules for t in (*m.parameters(), *m.buffers()))


@dataclass
class LoadedCheckpoint:
    """Resident weights of one checkpoint, or of one split loader's files (a diffusion model in one weight
    dtype; a set of text encoders): `key` tells entries of the same files apart (patches are cached by it)."""

    name: str
    path: Path
    digest: str
    parts: CheckpointParts
    device: torch.device
    unet_dtype: torch.dtype
    vae_dtype: torch.dtype
    nbytes: int
    sampling: ModelSampling
    latent_format: LatentFormat
    family: str
    key: str
    fast: FastUNet | None = None  # the bucketed compiled UNet (fast path), made on first use
    fast_decoder: FastDecoder | None = None  # the VAE's compiled decode (fast path), on first use
    fast_denoiser: FastDenoiser | None = None  # a registered family's bucketed model call (fast path), on first use
    host_bytes: int = 0  # a streamed diffusion model's blocks in (pinned) host memory

    def unet(self) -> tuple[nn.Module, Recognition]:
        """The diffusion model and its recognition; ModelError for a CLIP-only entry."""
        if self.parts.unet is None or self.parts.recognition is None:
            raise ModelError(f"{self.name} holds no diffusion model")
        return self.parts.unet, self.parts.recognition

    def vae(self) -> nn.Module:
        if self.parts.vae is None:
            raise ModelError(f"{self.name} holds no VAE")
        return self.parts.vae


@dataclass
class _Entry:
    value: Any
    nbytes: int
    info: dict[str, Any]
    fast_decoder: FastDecoder | None = None  # a VAE file's compiled decode (fast path), dropped with the entry


class ModelCache:
    """Process-wide cache of model weights (thread-safe; loads happen under one lock).

    What the arguments leave open comes from the settings (COMFYMESH_DEVICE, COMFYMESH_MODEL_CACHE_BYTES,
    COMFYMESH_HOST_MEMORY_BYTES); `fast` switches the fast path of the models it hands out (default: the settings'
    fast-path part). `host_budget_bytes` budgets host memory apart from the device (memory.host): on a GPU it
    defaults from the machine; on a CPU device host memory is the device, so there is none unless passed (tests
    run the GPU's accounting that way)."""

    def __init__(self, budget_bytes: int | None = None, device: torch.device | None = None,
                 fast: FastPathSettings | None = None, host_budget_bytes: int | None = None) -> None:
        settings = get_settings()
        self.device = device or default_device(settings)
        self.placement = Placement.for_device(self.device)
        self.fast = fast or settings
        if budget_bytes is None:
            if settings.model_cache_bytes is not None:
                budget_bytes = settings.model_cache_bytes
            elif self.device.type == "cuda":
                budget_bytes = int(torch.cuda.get_device_properties(self.device).total_memory * 0.8)
            else:
                budget_bytes = DEFAULT_CPU_BUDGET
        self.budget = budget_bytes
        if host_budget_bytes is None and self.device.type != "cpu":
            host_budget_bytes = settings.host_memory_bytes
            if host_budget_bytes is None:
                host_budget_bytes = default_host_budget(*host_memory())
        self.host_budget = host_budget_bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.RLock()
        self.held = HeldMemory()  # evicted models a running job still uses
        self.fp8_kernel = fp8_kernel(settings.fp8_matmul, self.device, device_capability(self.device))
        self.block_offload = settings.block_offload
        # one replica's blocks across these devices (memory.split_plan) when a model exceeds its own device's budget
        self.split_devices = [d.strip() for d in settings.diffusion_split_devices.split(",") if d.strip()]
        self._last_model_bytes = 0  # the diffusion model loaded last: what text encoders must make room for

    # -- digests --------------------------------------------------------------------------------
    def digest(self, path: Path) -> str:
        """sha256 of the file (hashed once, then remembered by path, size, mtime and inode)."""
        try:
            return file_digest(path)
        except FileNotFoundError as exc:
            raise ModelError(f"model file {path} does not exist") from exc

    # -- LRU ------------------------------------------------------------------------------------
    def _get_or_load(self, key: str, load: Callable[[], tuple[Any, int, dict[str, Any]]]) -> Any:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry.value
            value, nbytes, info = load()
            self._evict(nbytes)
            self._entries[key] = _Entry(value, nbytes, info)
            return value

    def _evict(self, incoming: int, keep: str = "") -> None:
        """Make room for `incoming` bytes on the device: text encoders move to host memory first (LRU; those
        encoding now stay), then the least recently used entries are dropped (`keep` is neither)."""
        for key in [k for k, e in self._entries.items() if self._demotable(e) and k != keep]:
            if self.used_bytes() + incoming <= self.budget:
                break
            self._to_host(key, "to make room")
        # with a host budget, encoders in host memory free no device memory: the host budget evicts them
        for key in [k for k, e in self._entries.items()
                    if k != keep and (self.host_budget is None or e.info.get("tier") != "host")]:
            if self.used_bytes() + incoming <= self.budget:
                break
            entry = self._entries.pop(key)
            self.held.evicted(entry.value)
            log.info("model cache: evicted %s (%s, %d bytes) to make room for %d bytes within the %d-byte budget",
                     entry.info.get("name", key), entry.info.get("kind"), entry.nbytes, incoming, self.budget)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def used_bytes(self) -> int:
        """Bytes of the entries on the device (text encoders moved to host memory do not count)."""
        return sum(e.nbytes for e in self._entries.values() if e.info.get("tier") != "host")

    def host_used_bytes(self) -> int:
        """Bytes of the entries in host memory: streamed blocks, and text encoders moved off the device."""
        return sum(e.nbytes if e.info.get("tier") == "host" else e.info.get("host_bytes", 0)
                   for e in self._entries.values())

    def _held_device(self) -> int:
        """Bytes of evicted models a job still holds that count against the device budget: those in host memory
        count against the host budget where there is one (a GPU), else (a CPU device) everything is the device."""
        return self.held.bytes() - (self.held.host_bytes() if self.host_budget is not None else 0)

    def _evict_host(self, incoming: int, keep: str = "", models: bool = False) -> None:
        """Make room for `incoming` bytes within the host budget: text encoders in host memory are dropped first
        (LRU), then, for a streamed model's load (`models`), the entries holding streamed blocks."""
        assert self.host_budget is not None
        kinds: list[Callable[[_Entry], bool]] = [lambda e: e.info.get("tier") == "host"]
        if models:
            kinds.append(lambda e: e.info.get("host_bytes", 0) > 0)
        for wanted in kinds:
            for key in [k for k, e in self._entries.items() if k != keep and wanted(e)]:
                if self.host_used_bytes() + incoming <= self.host_budget:
                    return
                entry = self._entries.pop(key)
                self.held.evicted(entry.value)
                log.info("model cache: evicted %s (%s, %d bytes) to make room for %d bytes within the %d-byte "
                         "host-memory budget", entry.info.get("name", key), entry.info.get("kind"), entry.nbytes,
                         incoming, self.host_budget)

    def _make_room(self, name: str, need: int, minimum: int | None = None) -> int:
        """Room for a model of `need` bytes (`minimum` when streamed) before any of it loads: ModelTooLargeError
        when it cannot fit the budget alone, ResourceExhaustedError when other jobs' models hold the memory;
        else evicts what it must and returns the device bytes the model may take."""
        check_fit(name, need, self.budget, 0, minimum)
        self._evict(min(need, self.budget))
        held = self._held_device()
        check_fit(name, need, self.budget, held + self.used_bytes(), minimum)
        return self.budget - held - self.used_bytes()

    # -- text encoders between the device and host memory (memory.encoders) ---------------------
    @staticmethod
    def _demotable(entry: _Entry) -> bool:
        return entry.info.get("kind") == "text_encoders" and entry.info.get("tier") != "host"

    def _to_host(self, key: str, why: str) -> bool:
        """Move a text-encoder entry's modules to host memory, unless a job is encoding with them; within the host
        budget, by dropping other encoders there (LRU), or dropping this entry when that leaves too little room."""
        entry = self._entries[key]
        locks = [flow_lora.model_lock(m) for m in entry.value.parts.clips.values()]
        taken = [lock for lock in locks if lock.acquire(blocking=False)]
        try:
            if len(taken) < len(locks):
                return False
            if self.host_budget is not None:
                self._evict_host(entry.nbytes, keep=key)
                if self.host_used_bytes() + self.held.host_bytes() + entry.nbytes > self.host_budget:
                    self.held.evicted(self._entries.pop(key).value)
                    log.info("model cache: evicted text encoders %s (%d bytes) instead of moving them to host memory "
                             "%s: the %d-byte host-memory budget cannot hold them", entry.info["name"], entry.nbytes,
                             why, self.host_budget)
                    return True
            for module in entry.value.parts.clips.values():
                module.to("cpu")
            entry.info["tier"] = "host"
            log.info("model cache: text encoders %s (%d bytes) moved to host memory %s", entry.info["name"],
                     entry.nbytes, why)
            return True
        finally:
            for lock in taken:
                lock.release()

    def _to_device(self, ckpt: LoadedCheckpoint) -> None:
        """Bring text encoders back from host memory (their locks held by the caller)."""
        with self._lock:
            entry = self._entries.get(ckpt.key)
            if entry is None or entry.info.get("tier") != "host":
                return
            self._evict(entry.nbytes, keep=ckpt.key)
            # the models evicted for them may still be sampling in another job: then retry later
            check_fit(ckpt.name, entry.nbytes, self.budget, self._held_device() + self.used_bytes(), slack=0.0)
            for module in ckpt.parts.clips.values():
                module.to(self.device)
            entry.info["tier"] = "device"
            log.info("model cache: text encoders %s (%d bytes) moved back to %s", ckpt.name, ckpt.nbytes, self.device)

    def _after_encode(self, ckpt: LoadedCheckpoint) -> None:
        """Text encoders leave the device once their prompt is encoded when the budget cannot hold them beside the
        diffusion model (memory.encoders)."""
        with self._lock:
            entry = self._entries.get(ckpt.key)
            if entry is None or not self._demotable(entry):
                return
            models = [e.nbytes for e in self._entries.values() if e.info.get("kind") in ("diffusion_model", "checkpoint")]
            model = max([*models, self._last_model_bytes])
            others = self.used_bytes() - entry.nbytes - (max(models) if models else 0)
            if encoders_leave_device(self.budget, entry.nbytes, model, others):
                self._to_host(ckpt.key, "after encoding: the budget cannot hold them beside the diffusion model")

    # -- checkpoints ----------------------------------------------------------------------------
    def get(self, ckpt_path: Path) -> LoadedCheckpoint:
        """The resident checkpoint for this file, loading it if needed."""
        ckpt_path = Path(ckpt_path)
        digest = self.digest(ckpt_path)

        def load() -> CheckpointParts:
            self._make_room(ckpt_path.name, resident_bytes([ckpt_path], self.placement.unet_dtype))
            return load_checkpoint(ckpt_path, self.placement)

        return self._resident(f"ckpt:{digest}", "checkpoint", ckpt_path, digest, load)

    def unet_file(self, path: Path, weight_dtype: str = "default") -> LoadedCheckpoint:
        """The resident diffusion model of a file (UNETLoader), in `weight_dtype`."""
        path = Path(path)
        digest = self.digest(path)
        return self._resident(f"unet:{digest}:{weight_dtype}", "diffusion_model", path, digest,
                              lambda: self._load_diffusion_model(path, weight_dtype), self.unet_kernel(weight_dtype))

    def unet_kernel(self, weight_dtype: str) -> Fp8Kernel:
        """How a diffusion model loaded in UNETLoader's `weight_dtype` multiplies its fp8 weights: fp8_e4m3fn_fast
        asks for fp8 matmuls for that model alone (ComfyUI's fp8_optimizations) where the device has them; the
        others follow COMFYMESH_FP8_MATMUL."""
        if weight_dtype == "fp8_e4m3fn_fast":
            return fp8_kernel(True, self.device, device_capability(self.device))
        return self.fp8_kernel

    def _load_diffusion_model(self, path: Path, weight_dtype: str) -> CheckpointParts:
        """A diffusion model checked against the budget before it loads; a registered family's model larger than
        the room left streams its blocks from host memory (memory.offload_plan, memory.streaming)."""
        registered = families.recognise(TensorSource(path)) is not None
        storage = WEIGHT_DTYPES[weight_dtype] if registered else None  # the families hold an fp8 weight_dtype in fp8
        blocks, other = offload_plan.file_blocks(tensor_bytes([path], self.placement.unet_dtype, storage))
        need = other + sum(blocks.values())
        has_blocks = registered and bool(blocks)  # what splitting and streaming work on
        if has_blocks and self.split_devices and need > self.budget:
            return self._load_split(path, weight_dtype, blocks, other, need)
        streams = self.block_offload and has_blocks
        if streams and need > self.budget:  # it can only run streamed: a host that cannot hold it evicts nothing
            self._host_room(path, blocks, other, self.budget, alone=True)
        room = self._make_room(path.name, need, offload_plan.minimum_bytes(blocks, other) if streams else None)
        self._last_model_bytes = need
        if need <= room:
            return load_unet_file(path, self.placement, weight_dtype)
        self._host_room(path, blocks, other, room)
        parts, unet = self._build_on_host(path, weight_dtype)
        blocks, other = offload_plan.module_blocks(unet)
        plan = offload_plan.plan(path.name, blocks, other, room)
        offload(unet, plan, self.device)
        return parts

    def _build_on_host(self, path: Path, weight_dtype: str) -> tuple[CheckpointParts, nn.Module]:
        """A diffusion model built on the host, to be placed by a plan after (streamed or split)."""
        with host_build(self._host_build_dtype()):
            parts = load_unet_file(path, Placement(), weight_dtype)
        assert parts.unet is not None
        if self.device.type == "cuda":  # the families' weights are bf16 on a GPU (fp8 ones stay fp8)
            for param in parts.unet.parameters():
                if param.dtype in (torch.float32, torch.float16):
                    param.data = param.data.to(torch.bfloat16)
        return parts, parts.unet

    def _load_split(self, path: Path, weight_dtype: str, blocks: dict[str, int], other: int,
                    need: int) -> CheckpointParts:
        """A registered family's model larger than this device's budget, its blocks split across the split devices
        (memory.split_plan): planned from the file before any weight is read (ModelTooLargeError when the devices
        together cannot hold it), built on the host, then placed. The budget counts the first device's part."""
        devices = [torch.device(d) for d in self.split_devices]
        if _indexed(devices[0]) != _indexed(self.device):
            raise ModelError(f"COMFYMESH_DIFFUSION_SPLIT_DEVICES lists {devices[0]} first but this replica runs on "
                             f"{self.device}: list the replica's own device first")
        others = [(str(d), self._split_free(d)) for d in devices[1:]]
        split(path.name, blocks, other, [(str(devices[0]), self.budget), *others])  # refused before evicting
        room = self._make_room(path.name, need, other)
        free = [(str(devices[0]), room), *others]
        split(path.name, blocks, other, free)  # refused before loading: other models hold some of the budget
        parts, unet = self._build_on_host(path, weight_dtype)
        blocks, other = offload_plan.module_blocks(unet)
        plan = split(path.name, blocks, other, free)
        place_split(unet, plan, devices)
        self._last_model_bytes = plan.stages[0].nbytes  # what text encoders share this device with
        return parts

    def _split_free(self, device: torch.device) -> int:
        """Bytes a split may take on another device: its free memory less a fifth of the card (activations, as the
        default budget leaves); a CPU device (tests) offers this cache's budget."""
        if device.type != "cuda":
            return self.budget
        free, total = torch.cuda.mem_get_info(device)
        return max(0, free - total // 5)

    def _host_build_dtype(self) -> torch.dtype:
        """The dtype a streamed model is built in on the host: the device's compute dtype (bf16 on a GPU)."""
        return compute_dtype(self.device)

    def _host_room(self, path: Path, blocks: dict[str, int], other: int, room: int, alone: bool = False) -> None:
        """Host room for a model streamed within `room` device bytes, before any of it loads (memory.host): it is
        built on the host (in the host build's dtype), then its streamed blocks stay there pinned. Refused alone
        against the budget, or (not `alone`) after evicting what holds host memory, against what jobs still hold."""
        if self.host_budget is None:
            return
        pinned = offload_plan.plan(path.name, blocks, other, room).streamed_bytes
        needed = max(pinned, resident_bytes([path], self._host_build_dtype()))
        check_host_fit(path.name, needed, pinned, self.host_budget, 0)
        if alone:
            return
        self._evict_host(needed, models=True)
        check_host_fit(path.name, needed, pinned, self.host_budget, self.host_used_bytes() + self.held.host_bytes())

    def text_encoder_files(self, paths: Sequence[Path], clip_type: str) -> LoadedCheckpoint:
        """The resident text encoders of CLIP loader files of `clip_type` (ModelError if the files do not
        make one, or the type is not supported yet)."""
        paths = [Path(p) for p in paths]
        digest = "+".join(self.digest(p) for p in paths)

        def load() -> CheckpointParts:
            self._make_room(paths[0].name, resident_bytes(paths, self.placement.unet_dtype))
            registered = families.for_clip_type(clip_type)
            if registered is not None:
                return load_family_encoders(registered, clip_type, paths, self.placement)
            family, encoders = assign_encoders(clip_type, [TensorSource(p) for p in paths])
            return load_text_encoders(family, encoders, self.placement)

        return self._resident(f"clip:{clip_type}:{digest}", "text_encoders", paths[0], digest, load)

    def _resident(self, key: str, kind: str, path: Path, digest: str, build: Callable[[], CheckpointParts],
                  kernel: Fp8Kernel | None = None) -> LoadedCheckpoint:
        """The cached entry `key`, built (and described) if missing; `kernel`: how its fp8 linears compute (the
        stage's COMFYMESH_FP8_MATMUL choice unless given)."""
        def load() -> tuple[Any, int, dict[str, Any]]:
            loaded = self._describe(path, digest, build(), key, kernel or self.fp8_kernel)
            info = {"name": path.name, "digest": digest, "bytes": loaded.nbytes, "device": str(self.device),
                    "family": loaded.family, "kind": kind, "host_bytes": loaded.host_bytes}
            return loaded, loaded.nbytes, info

        value: LoadedCheckpoint = self._get_or_load(key, load)
        return value

    def _describe(self, path: Path, digest: str, parts: CheckpointParts, key: str,
                  kernel: Fp8Kernel) -> LoadedCheckpoint:
        rec = parts.recognition
        family = rec.family if rec is not None else parts.family
        place = self.placement
        modules = [m for m in (parts.unet, parts.vae, *parts.clips.values()) if m is not None]
        nbytes = module_bytes(*modules)
        host_bytes = 0
        if parts.unet is not None:
            set_fp8_kernel(parts.unet, kernel)
            streamer = streamer_of(parts.unet)
            if streamer is not None:  # the budget holds its device part: the streamed blocks' window
                nbytes += streamer.plan.window_bytes - streamer.plan.streamed_bytes
                host_bytes = streamer.plan.streamed_bytes  # the host budget holds the blocks (memory.host)
            placement = split_of(parts.unet)
            if placement is not None:  # the budget is this device's: the other devices' stages are not in it
                nbytes -= sum(stage.nbytes for stage in placement.plan.stages[1:])
        return LoadedCheckpoint(
            name=path.name, path=path, digest=digest, parts=parts, device=self.device, unet_dtype=place.unet_dtype,
            vae_dtype=place.vae_dtype, nbytes=nbytes,
            sampling=ModelSampling(zero_terminal_snr=rec is not None and rec.ztsnr), latent_format=for_family(family),
            family=family, key=key, host_bytes=host_bytes,
        )

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{k: e.info[k] for k in ("name", "digest", "bytes", "device", "family")}
                    for e in self._entries.values() if e.info.get("kind") in RESIDENT_KINDS]

    def unload(self, name: str | None = None) -> int:
        """Drop one checkpoint (by file name or digest) with its patches, or everything (None)."""
        with self._lock:
            if name is None:
                drop = list(self._entries)
            else:
                digests = {e.info["digest"] for e in self._entries.values()
                           if e.info.get("kind") in RESIDENT_KINDS and name in (e.info["name"], e.info["digest"])}
                drop = [k for k in self._entries if any(d in k for d in digests)]
            for k in drop:  # a running job may still hold them (memory.held)
                self.held.evicted(self._entries.pop(k).value)
            count = len(drop)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return count

    # -- VAE and LoRA files ---------------------------------------------------------------------
    def vae_file(self, path: Path) -> tuple[str, nn.Module]:
        digest = self.digest(path)

        def load() -> tuple[Any, int, dict[str, Any]]:
            vae = load_vae_file(path, self.placement)
            return vae, module_bytes(vae), {"name": path.name, "digest": digest, "kind": "vae"}

        return digest, self._get_or_load(f"vae:{digest}", load)

    def vae_file_decoder(self, digest: str, vae: nn.Module) -> FastDecoder | None:
        """The compiled decoder of a resident VAE file's module where the fast path compiles (the families'
        16-channel VAEs come from their own files); None: decode eagerly (or the entry is gone)."""
        if not self.fast.compile_enabled(self.device.type):
            return None
        with self._lock:
            entry = self._entries.get(f"vae:{digest}")
            if entry is None or entry.value is not vae:
                return None
            if entry.fast_decoder is None:
                entry.fast_decoder = FastDecoder(vae, self.device, settings=self.fast)
            return entry.fast_decoder

    def model_file(self, kind: str, path: Path, load: Callable[[Path], Any]) -> tuple[str, Any]:
        """A resident model of its own file (upscale, CLIP vision, style models): `load` builds it once per
        digest, an nn.Module or a wrapper holding one as `.model` (spandrel's descriptors)."""
        digest = self.digest(path)

        def build() -> tuple[Any, int, dict[str, Any]]:
            model = load(path)
            nbytes = module_bytes(model if isinstance(model, nn.Module) else model.model)
            return model, nbytes, {"name": path.name, "digest": digest, "kind": kind}

        return digest, self._get_or_load(f"{kind}:{digest}", build)

    def lora_file(self, path: Path) -> tuple[str, dict[str, lora_mod.Adapter]]:
        digest = self.digest(path)

        def load() -> tuple[Any, int, dict[str, Any]]:
            pairs = lora_mod.read_lora(path)
            nbytes = sum(p.nbytes() for p in pairs.values())
            return pairs, nbytes, {"name": path.name, "digest": digest, "kind": "lora"}

        return digest, self._get_or_load(f"lora:{digest}", load)

    # -- runtime views with LoRA patches --------------------------------------------------------
    def _patches(self, ckpt: LoadedCheckpoint, part: str, loras: Sequence[LoraSpec],
                 ) -> dict[str, dict[str, torch.Tensor]]:
        """Patched weights per module ("unet" or a CLIP role) for this LoRA stack, cached."""
        active = [(p, s) for p, s in loras if s != 0.0]
        if not active:
            return {}
        specs = [(self.lora_file(p), p.name, s) for p, s in active]
        key = f"patch:{part}:{ckpt.key}:" + ",".join(f"{d}@{s!r}" for (d, _), _, s in specs)

        def load() -> tuple[Any, int, dict[str, Any]]:
            out: dict[str, dict[str, torch.Tensor]] = {}
            kmap = ckpt.parts.lora_map
            stack = [(pairs, strength) for (_, pairs), _name, strength in specs]
            if part == "unet" and kmap is not None and ckpt.parts.unet is not None:  # a registered family
                out["unet"], _ = flow_lora.patched_weights(ckpt.parts.unet, kmap, stack)
            elif part == "clip" and families.get(ckpt.family) is not None:  # a family's text encoders
                for role, (module, names) in self._family_text_targets(ckpt).items():
                    patched, _ = flow_lora.patched_weights(module, names, stack)
                    if patched:
                        out[role] = patched
            else:
                targets = self._lora_targets(ckpt, part)
                for (_, pairs), _name, strength in specs:
                    for target, (module, lookup) in targets.items():
                        patched, used = lora_mod.patch_weights(module, lookup, pairs, strength, out.get(target))
                        if used:
                            out[target] = patched
            nbytes = sum(t.numel() * t.element_size() for d in out.values() for t in d.values())
            return out, nbytes, {"name": key, "digest": ckpt.digest, "kind": "patch"}

        value: dict[str, dict[str, torch.Tensor]] = self._get_or_load(key, load)
        return value

    def check_lora(self, path: Path, *models: LoadedCheckpoint) -> None:
        """NodeInputError if the LoRA file fits no layer of the models (UNets or text encoders)."""
        _, pairs = self.lora_file(path)
        used: set[str] = set()
        for ckpt in models:
            family = families.get(ckpt.family)
            if family is not None and ckpt.parts.unet is not None:
                if not family.lora or ckpt.parts.lora_map is None:
                    raise NodeInputError(f"LoRA on {family.name} models is not supported yet")
                used |= flow_lora.fitting(ckpt.parts.unet, ckpt.parts.lora_map, pairs)
            if family is not None:  # a family's text encoders: ComfyUI's CLIP/T5 LoRA names
                for module, names in self._family_text_targets(ckpt).values():
                    used |= flow_lora.fitting(module, names, pairs)
                continue
            for part in ("unet", "clip"):
                for module, lookup in self._lora_targets(ckpt, part).values():
                    used |= lora_mod.fitting(module, lookup, pairs)
        lora_mod.check_fit(path.name, pairs, used)

    @staticmethod
    def _family_text_targets(ckpt: LoadedCheckpoint) -> dict[str, tuple[nn.Module, flow_lora.LoraKeyMap]]:
        clips = ckpt.parts.clips
        return {role: (module, flow_lora.text_encoder_names(role, module, list(clips)))
                for role, module in clips.items()}

    @contextmanager
    def family_text_lora(self, ckpt: LoadedCheckpoint, loras: Sequence[LoraSpec] = ()) -> Iterator[None]:
        """A registered family's text encoders (ckpt.parts.clips) with the LoRA stack's text-encoder patches
        swapped in for the duration; each encoder's lock is held meanwhile (in role order), patched or not, so
        no other job encodes inside the swap."""
        patches = self._patches(ckpt, "clip", loras)
        with ExitStack() as stack:
            for role in sorted(ckpt.parts.clips):
                module = ckpt.parts.clips[role]
                stack.enter_context(flow_lora.model_lock(module))
            self._to_device(ckpt)
            for role in sorted(ckpt.parts.clips):
                if patches.get(role):
                    stack.enter_context(flow_lora.swapped(ckpt.parts.clips[role], patches[role]))
            yield
            self._after_encode(ckpt)

    @staticmethod
    def _lora_targets(ckpt: LoadedCheckpoint, part: str) -> dict[str, tuple[nn.Module, dict[str, str]]]:
        parts = ckpt.parts
        if part == "unet":
            if parts.unet is None:
                return {}
            return {"unet": (parts.unet, lora_mod.module_lookup(parts.unet, "lora_unet_", parts.unet_modules))}
        if len(parts.clips) > 1:
            prefixes = {"l": "lora_te1_", "g": "lora_te2_"}
        else:
            prefixes = {role: "lora_te_" for role in parts.clips}
        return {role: (clip, lora_mod.module_lookup(clip, prefixes[role], add_text_model=True))
                for role, clip in parts.clips.items()}

    def sampling_model(self, ckpt: LoadedCheckpoint, loras: Sequence[LoraSpec] = ()) -> SamplingModel:
        module, rec = ckpt.unet()
        family = families.get(rec.family)
        if family is not None:  # its own model call
            sm = family.sampling_model(module, rec, ckpt.device)
            # the patched weights swapped in per call (the cached tensors stay as loaded); unpatched calls of
            # the model take the same lock, so that no job runs inside another's swap
            overrides = self._patches(ckpt, "unet", loras).get("unet", {}) if family.lora else {}
            # hooks copy weights (streamed) or move inputs (split) per call: no graph captures them
            streamed = streamer_of(module) is not None or split_of(module) is not None
            if overrides or streamed or not family.fast_path or not self.fast.fast_enabled(ckpt.device.type):
                return dataclasses.replace(sm, unet=flow_lora.patched_call(sm.unet, module, overrides))
            with self._lock:  # LoRA-patched calls stay eager (above); the fast one holds the same lock
                if ckpt.fast_denoiser is None:
                    ckpt.fast_denoiser = FastDenoiser(family.name, sm.unet, family.static_form(module),  # type: ignore[attr-defined]
                                                      ckpt.device, flow_lora.model_lock(module), settings=self.fast)
            return dataclasses.replace(sm, unet=ckpt.fast_denoiser)
        overrides = self._patches(ckpt, "unet", loras).get("unet", {})
        unet: UNetFn = _unet_fn(module, overrides)
        if not overrides and self.fast.fast_enabled(ckpt.device.type):
            # LoRA-patched weights go through functional_call and stay eager
            with self._lock:
                if ckpt.fast is None:
                    ckpt.fast = FastUNet(module, ckpt.device, settings=self.fast)
            unet = ckpt.fast
        return SamplingModel(
            unet=unet, sampling=ckpt.sampling, prediction=rec.prediction,
            latent_format=ckpt.latent_format, family=rec.family, context_dim=rec.unet.context_dim,
            adm=rec.unet.adm, device=ckpt.device, dtype=ckpt.unet_dtype, in_channels=rec.unet.in_channels,
            residual_unet=_residual_unet_fn(module, overrides),
        )

    def decoder(self, ckpt: LoadedCheckpoint) -> FastDecoder | None:
        """The checkpoint VAE's compiled decoder where the fast path compiles (None: decode eagerly; a VAE
        from its own file: `vae_file_decoder`)."""
        if not self.fast.compile_enabled(ckpt.device.type):
            return None
        with self._lock:
            if ckpt.fast_decoder is None:
                ckpt.fast_decoder = FastDecoder(ckpt.vae(), ckpt.device, settings=self.fast)
        return ckpt.fast_decoder

    def text_encoders(self, ckpt: LoadedCheckpoint, loras: Sequence[LoraSpec] = ()) -> TextEncoders:
        patches = self._patches(ckpt, "clip", loras)
        runners: dict[str, Runner] = {}
        layers: dict[str, int] = {}
        widths: dict[str, int] = {}
        projection = None
        clip: Any
        for role, clip in ckpt.parts.clips.items():
            runners[role] = _clip_fn(ClipRunner(clip), patches.get(role, {}))
            layers[role] = clip.config.num_hidden_layers
            widths[role] = clip.config.hidden_size
            if hasattr(clip, "text_projection"):
                projection = patches.get(role, {}).get("text_projection.weight", clip.text_projection.weight)
        return TextEncoders(ckpt.family, runners, layers, widths, projection, ckpt.device)


def _unet_fn(unet: nn.Module, overrides: dict[str, torch.Tensor]) -> UNetFn:
    # functional_call swaps the weights on the shared module: eager calls of it take turns (stage slots)
    lock = flow_lora.model_lock(unet)

    def run(x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        kwargs = {"encoder_hidden_states": ctx, "class_labels": y, "return_dict": False}
        with lock:
            out = functional_call(unet, overrides, (x, t), kwargs, strict=False) if overrides else unet(x, t, **kwargs)
        result: torch.Tensor = out[0]
        return result

    return run


def _residual_unet_fn(unet: nn.Module, overrides: dict[str, torch.Tensor]) -> ResidualUNetFn:
    """The eager UNet adding ControlNet residuals to its down-block skips and middle block."""
    lock = flow_lora.model_lock(unet)

    def run(x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor | None, down: list[torch.Tensor],
            mid: torch.Tensor) -> torch.Tensor:
        kwargs = {"encoder_hidden_states": ctx, "class_labels": y, "return_dict": False,
                  "down_block_additional_residuals": tuple(down), "mid_block_additional_residual": mid}
        with lock:
            out = functional_call(unet, overrides, (x, t), kwargs, strict=False) if overrides else unet(x, t, **kwargs)
        result: torch.Tensor = out[0]
        return result

    return run


def _clip_fn(runner: ClipRunner, overrides: dict[str, torch.Tensor]) -> Runner:
    prefixed = {"clip." + k: v for k, v in overrides.items()}
    lock = flow_lora.model_lock(runner.clip)

    def run(ids: torch.Tensor, vecs: torch.Tensor, use: torch.Tensor, layer: int,
            final_norm: bool) -> tuple[torch.Tensor, torch.Tensor]:
        with lock:
            if prefixed:
                out = functional_call(runner, prefixed, (ids, vecs, use, layer, final_norm), strict=False)
            else:
                out = runner(ids, vecs, use, layer, final_norm)
        return out[0], out[1]

    return run


_cache: ModelCache | None = None
_cache_lock = threading.Lock()


def get_model_cache() -> ModelCache:
    """The process-wide cache (created on first use from the settings)."""
    global _cache
    with _cache_lock:
        if _cache is None:
            _cache = ModelCache()
        return _cache


def set_model_cache(cache: ModelCache | None) -> None:
    """Replace the process-wide cache (a stage at startup, or tests)."""
    global _cache
    with _cache_lock:
        _cache = cache
