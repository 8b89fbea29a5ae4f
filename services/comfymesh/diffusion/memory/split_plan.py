"""The plan for a diffusion transformer split across several devices of one replica (pipeline fashion): contiguous
ranges of its blocks per device in call order, the non-block modules (embedders, output layers) on the first.

Blocks are those of memory.offload_plan (children of the model's top-level ModuleLists). Devices fill in the order
listed, each up to its free bytes, so the model takes the fewest devices and hidden states cross the fewest
boundaries: one per boundary between stages, and one back to the first device for the output layers.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from comfymesh.contracts.errors import ModelTooLargeError
from comfymesh.diffusion.memory.fit import gib


@dataclass(frozen=True)
class SplitStage:
    """One device's share of the model: its blocks in call order and their bytes (the non-block modules' too on
    the first device), within `free` bytes."""

    device: str
    blocks: tuple[str, ...]
    nbytes: int
    free: int


@dataclass(frozen=True)
class SplitPlan:
    """Which device holds each block of one model (bytes in its storage dtypes); a stage per listed device, the
    unused ones empty."""

    name: str
    other_bytes: int
    stages: tuple[SplitStage, ...]

    def stage_of(self, block: str) -> int:
        """The index of the stage holding `block` (0 for anything that is not a block)."""
        for i, stage in enumerate(self.stages):
            if block in stage.blocks:
                return i
        return 0

    @property
    def used(self) -> tuple[int, ...]:
        """Indices of the stages holding blocks, in call order."""
        return tuple(i for i, s in enumerate(self.stages) if s.blocks)

    @property
    def transfers(self) -> int:
        """Hidden-state moves between devices in one model call: into each stage after the first device's, and
        back to the first device for the output layers."""
        hops = [0, *self.used, 0]
        return sum(1 for a, b in itertools.pairwise(hops) if a != b)

    def describe(self) -> str:
        parts = []
        for i, s in enumerate(self.stages):
            if not s.blocks and i != 0:
                continue
            what = [*(["the non-block modules"] if i == 0 else []),
                    *([_blocks(s.blocks)] if s.blocks else [])]
            parts.append(f"{s.device} ← {' and '.join(what)}: {gib(s.nbytes)} of {gib(s.free)} free")
        return (f"{self.name}: split over {len(self.used) or 1} of {len(self.stages)} devices; " + "; ".join(parts)
                + f"; {self.transfers} hidden-state transfers per model call")


def _blocks(names: tuple[str, ...]) -> str:
    return f"1 block ({names[0]})" if len(names) == 1 else f"{len(names)} blocks ({names[0]} … {names[-1]})"


def split(name: str, blocks: Mapping[str, int], other: int, free_bytes_per_device: Sequence[tuple[str, int]]
          ) -> SplitPlan:
    """The plan for a model of `blocks` (name → bytes, call order) and `other` non-block bytes over
    `free_bytes_per_device` ((device, free bytes), the first one holding the non-block modules): each device in
    turn takes the next blocks while they fit. ModelTooLargeError, naming the bytes, when the devices together
    cannot hold it (a filled device's leftover cannot take the next block: contiguous ranges only)."""
    if not free_bytes_per_device:
        raise ValueError("a split needs at least one device")
    names = list(blocks)
    total = other + sum(blocks.values())
    devices = ", ".join(f"{d} ({gib(f)} free)" for d, f in free_bytes_per_device)
    first, free_first = free_bytes_per_device[0]
    if other > free_first:
        raise ModelTooLargeError(f"{name}'s non-block modules need {gib(other)} but the first device of the split, "
                                 f"{first} ({gib(free_first)} free), cannot hold them: it cannot run on this replica")
    stages = []
    at = 0
    for i, (device, free) in enumerate(free_bytes_per_device):
        used = other if i == 0 else 0
        start = at
        while at < len(names) and used + blocks[names[at]] <= free:
            used += blocks[names[at]]
            at += 1
        stages.append(SplitStage(device, tuple(names[start:at]), used, free))
    if at < len(names):
        left = sum(blocks[n] for n in names[at:])
        raise ModelTooLargeError(
            f"{name} needs {gib(total)} of memory ({gib(other)} non-block modules, {len(names)} blocks) but the "
            f"split devices {devices} hold only its first {at} blocks in call order ({gib(left)} left over): "
            "it cannot run on this replica; list more devices in COMFYMESH_DIFFUSION_SPLIT_DEVICES")
    return SplitPlan(name, other, tuple(stages))
