"""Blocks of a model streamed to the device while it runs: their weights live in (pinned) host memory, each block's
copy starts while the block before it computes, and its device copy is dropped when it has run.

On CUDA the copies run on their own stream and the compute stream waits on an event per block, so copying block
i+1 overlaps computing block i; on the CPU the same machinery runs with plain copies and no streams. Each call
copies whatever tensors the block holds at that moment, so LoRA weights swapped in for the call (flow_lora.swapped)
stream too; the kernels and weights are those of the resident model, so results are bit-identical.

Each call's time, and the part of it the compute spent waiting for block copies, is logged once the call has run
(on CUDA from timing events around each wait on the compute stream, read when they have completed, so the host never
waits for them; on the CPU the copies run inline, so all their time is waiting).
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from comfymesh.diffusion.memory.offload_plan import OffloadPlan

log = logging.getLogger(__name__)

Slot = tuple[dict[str, Any], str]  # a module's _parameters or _buffers dict, and the name in it


@dataclass
class _Copy:
    slots: list[Slot]  # the block's tensors when the copy started (read each call: buffers set later count too)
    tensors: dict[int, torch.Tensor]  # slot index → device copy
    ready: torch.cuda.Event | None
    originals: list[Any] = field(default_factory=list)


Mark = torch.cuda.Event | float  # a point on the compute stream: a timing event (CUDA), or perf_counter() (CPU)


def _between(a: Mark, b: Mark) -> float:
    """Seconds from mark a to mark b."""
    if isinstance(a, float) and isinstance(b, float):
        return b - a
    assert isinstance(a, torch.cuda.Event) and isinstance(b, torch.cuda.Event)
    return float(a.elapsed_time(b)) / 1000


@dataclass
class _Call:
    """One model call's marks: its start and end, and (before, after) around each wait for a block's copy."""

    start: Mark
    end: Mark | None = None
    waits: list[tuple[Mark, Mark]] = field(default_factory=list)

    def done(self) -> bool:
        return self.end is not None and (not isinstance(self.end, torch.cuda.Event) or self.end.query())

    def seconds(self) -> tuple[float, float]:
        """(the call's time, the part of it spent waiting on copies)."""
        assert self.end is not None
        return _between(self.start, self.end), sum(_between(a, b) for a, b in self.waits)


def _slots(block: nn.Module) -> list[Slot]:
    out: list[Slot] = []
    for module in block.modules():
        for table in (module._parameters, module._buffers):
            out.extend((table, name) for name, t in table.items() if t is not None)
    return out


class BlockStreamer:
    """Streams `blocks` of `model` to `device` during each forward (installed by `offload`; `remove` undoes)."""

    def __init__(self, model: nn.Module, blocks: Sequence[nn.Module], device: torch.device, plan: OffloadPlan,
                 before: nn.Module | None = None) -> None:
        self.model = model
        self.plan = plan
        self.device = device
        self.blocks = list(blocks)
        self.copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.inflight: dict[int, _Copy] = {}
        self.copies = 0  # blocks copied so far (tests and logs)
        # calls whose time is known (their marks completed): how many, their seconds, and those spent waiting on copies
        self.calls = 0
        self.call_s = 0.0
        self.copy_wait_s = 0.0
        self._call: _Call | None = None
        self._pending: list[_Call] = []  # ended calls whose CUDA marks have not completed yet
        self.handles: list[RemovableHandle] = [
            model.register_forward_pre_hook(lambda _m, _a: self._begin()),
            model.register_forward_hook(lambda _m, _a, _o: self._end(), always_call=True),
        ]
        if before is not None:  # the first streamed block copies while the block before it computes
            self.handles.append(before.register_forward_pre_hook(lambda _m, _a: self._fetch(0)))
        for i, block in enumerate(self.blocks):
            self.handles.append(block.register_forward_pre_hook(lambda _m, _a, i=i: self._enter(i)))
            self.handles.append(block.register_forward_hook(lambda _m, _a, _o, i=i: self._leave(i), always_call=True))

    def _stream(self) -> AbstractContextManager[Any]:
        return torch.cuda.stream(self.copy_stream) if self.copy_stream is not None else nullcontext()

    def _mark(self) -> Mark:
        if self.copy_stream is None:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    def _begin(self) -> None:
        self._call = _Call(self._mark())
        self._fetch(0)

    def _end(self) -> None:
        self._drop_all()
        if self._call is None:
            return
        self._call.end = self._mark()
        self._pending.append(self._call)
        self._call = None
        while self._pending and self._pending[0].done():
            call_s, wait_s = self._pending.pop(0).seconds()
            self.calls += 1
            self.call_s += call_s
            self.copy_wait_s += wait_s
            log.info("streamed call of %s: %.4f s, %.4f s of it waiting on block copies (%.1f%%)", self.plan.name,
                     call_s, wait_s, 100 * wait_s / call_s if call_s > 0 else 0.0)

    def _fetch(self, i: int) -> None:
        """Start copying block i's current tensors to the device (on the copy stream)."""
        if i >= len(self.blocks) or i in self.inflight:
            return
        before = self._mark() if self.copy_stream is None else None  # on the CPU the copy itself is the wait
        slots = _slots(self.blocks[i])
        with self._stream():
            tensors = {k: table[name].to(self.device, non_blocking=True, copy=True)
                       for k, (table, name) in enumerate(slots)}
            ready = None
            if self.copy_stream is not None:
                ready = torch.cuda.Event()
                ready.record(self.copy_stream)
        self.inflight[i] = _Copy(slots, tensors, ready)
        self.copies += 1
        if before is not None and self._call is not None:
            self._call.waits.append((before, self._mark()))

    def _enter(self, i: int) -> None:
        self._fetch(i)
        copy = self.inflight[i]
        if copy.ready is not None:
            before = self._mark()
            torch.cuda.current_stream(self.device).wait_event(copy.ready)
            if self._call is not None:
                self._call.waits.append((before, self._mark()))
        self._fetch(i + 1)  # the next block copies while this one computes
        for k, (table, name) in enumerate(copy.slots):
            copy.originals.append(table[name])
            table[name] = copy.tensors[k]

    def _leave(self, i: int) -> None:
        copy = self.inflight.pop(i, None)
        if copy is None or not copy.originals:
            return
        for k, (table, name) in enumerate(copy.slots):
            table[name] = copy.originals[k]
        if self.copy_stream is not None:  # memory made on the copy stream, used on the compute stream
            compute = torch.cuda.current_stream(self.device)
            for t in copy.tensors.values():
                t.record_stream(compute)

    def _drop_all(self) -> None:
        for i in list(self.inflight):
            self._leave(i)
        self.inflight.clear()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        _streamers.pop(self.model, None)


def offload(model: nn.Module, plan: OffloadPlan, device: torch.device) -> BlockStreamer | None:
    """Place `model` as `plan` says: streamed blocks in host memory (pinned when `device` is CUDA), the rest on
    `device`; returns the streamer running the streamed blocks (None when everything is resident)."""
    blocks = [model.get_submodule(name) for name in plan.streamed]
    in_blocks = {id(m) for b in blocks for m in b.modules()}
    pin = device.type == "cuda"
    for module in model.modules():
        here = id(module) in in_blocks
        tables: tuple[dict[str, Any], ...] = (module._parameters, module._buffers)
        for table in tables:
            for key, t in table.items():
                if t is None:
                    continue
                data = t.detach().to("cpu") if here else t.detach().to(device)
                if here and pin and not data.is_pinned():
                    data = data.pin_memory()
                table[key] = nn.Parameter(data, requires_grad=False) if isinstance(t, nn.Parameter) else data
    log.info("memory plan %s", plan.describe())
    if not blocks:
        return None
    before = model.get_submodule(plan.resident[-1]) if plan.resident else None
    streamer = _streamers[model] = BlockStreamer(model, blocks, device, plan, before)
    return streamer


def streamer_of(model: nn.Module) -> BlockStreamer | None:
    """The streamer running some of `model`'s blocks, None for a resident model."""
    return _streamers.get(model)


_streamers: weakref.WeakKeyDictionary[nn.Module, BlockStreamer] = weakref.WeakKeyDictionary()
