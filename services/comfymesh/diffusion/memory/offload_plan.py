"""The plan for a diffusion transformer larger than its memory budget: which modules stay resident on the GPU and
which blocks stream from host memory one block ahead, with their bytes and the copy time a step must cover.

Blocks are the children of the model's top-level ModuleLists (FLUX's double and single blocks, Qwen-Image's and
Z-Image's layers), or in a file the keys `<list>.<index>.…` of the same names before conversion. Everything else
(embedders, final layer) is resident. The first blocks stay resident while the budget allows, beside a window of
two streamed blocks (the one computing, the next one copying).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from comfymesh.diffusion.memory.fit import gib

# host→device copy rate of pinned memory assumed for the expected step time (PCIe Gen5 x16 measures about 50 GB/s;
# a conservative figure, so the plan's copy time is an upper bound)
H2D_BYTES_PER_S = 25e9
WINDOW_BLOCKS = 2
_BLOCK_KEY = re.compile(r"^(.*?[A-Za-z_]\w*)\.(\d+)\.")


@dataclass(frozen=True)
class OffloadPlan:
    """Where one model's weights live while it runs (bytes in its storage dtypes)."""

    name: str
    budget: int
    resident: tuple[str, ...]  # blocks kept on the device (the non-block modules always are)
    streamed: tuple[str, ...]  # blocks streamed from pinned host memory, in call order
    resident_bytes: int  # non-block modules and resident blocks
    streamed_bytes: int
    window_bytes: int  # device memory the streamed blocks take at once

    @property
    def device_bytes(self) -> int:
        return self.resident_bytes + (self.window_bytes if self.streamed else 0)

    @property
    def copy_s(self) -> float:
        """Host→device copy time of one model call's streamed blocks: the step time cannot be shorter."""
        return self.streamed_bytes / H2D_BYTES_PER_S

    def describe(self) -> str:
        if not self.streamed:
            return f"{self.name}: resident ({gib(self.resident_bytes)} within the {gib(self.budget)} budget)"
        return (f"{self.name}: {gib(self.resident_bytes)} resident ({len(self.resident)} blocks and the non-block "
                f"modules), {len(self.streamed)} blocks streamed from pinned host memory ({gib(self.streamed_bytes)}, "
                f"{self.streamed[0]} … {self.streamed[-1]}) through a {gib(self.window_bytes)} window; "
                f"{gib(self.device_bytes)} of the {gib(self.budget)} budget; expected step time ≥ {self.copy_s:.2f} s "
                f"per model call (copies at {H2D_BYTES_PER_S / 1e9:.0f} GB/s, overlapped with compute)")


def plan(name: str, blocks: Mapping[str, int], other_bytes: int, budget: int) -> OffloadPlan:
    """The plan for a model of `blocks` (name → bytes, call order) and `other_bytes` of non-block weights: all
    resident when it fits, else the first blocks resident while the rest streams within `budget`. A plan whose
    device bytes exceed the budget means the model cannot fit even streamed (see minimum_bytes)."""
    names = list(blocks)
    total = other_bytes + sum(blocks.values())
    if total <= budget or not names:
        return OffloadPlan(name, budget, resident=tuple(names), streamed=(), resident_bytes=total, streamed_bytes=0,
                           window_bytes=0)
    window = sum(sorted(blocks.values(), reverse=True)[:WINDOW_BLOCKS])
    kept = 0
    used = other_bytes + window
    while kept < len(names) and used + blocks[names[kept]] <= budget:
        used += blocks[names[kept]]
        kept += 1
    resident, streamed = names[:kept], names[kept:]
    return OffloadPlan(name, budget, resident=tuple(resident), streamed=tuple(streamed),
                       resident_bytes=other_bytes + sum(blocks[b] for b in resident),
                       streamed_bytes=sum(blocks[b] for b in streamed), window_bytes=window)


def minimum_bytes(blocks: Mapping[str, int], other_bytes: int) -> int:
    """The least device memory the model runs in: its non-block weights and the window of streamed blocks."""
    return other_bytes + sum(sorted(blocks.values(), reverse=True)[:WINDOW_BLOCKS])


def module_blocks(model: nn.Module) -> tuple[dict[str, int], int]:
    """(block name → bytes in call order, non-block bytes) of a built model."""
    blocks: dict[str, int] = {}
    for list_name, child in model.named_children():
        if isinstance(child, nn.ModuleList):
            for index, block in enumerate(child):
                blocks[f"{list_name}.{index}"] = _bytes(block)
    return blocks, _bytes(model) - sum(blocks.values())


def file_blocks(sizes: Mapping[str, int]) -> tuple[dict[str, int], int]:
    """(block name → bytes, non-block bytes) from a file's key → resident bytes (fit.tensor_bytes): keys
    `<list>.<index>.…` of a list with several indices group into blocks, in file order of first appearance."""
    grouped: dict[str, int] = {}
    indices: dict[str, set[str]] = {}
    other = 0
    for key, size in sizes.items():
        m = _BLOCK_KEY.match(key)
        if m is None:
            other += size
            continue
        name = f"{m.group(1)}.{m.group(2)}"
        grouped[name] = grouped.get(name, 0) + size
        indices.setdefault(m.group(1), set()).add(m.group(2))
    blocks = {}
    for name, size in grouped.items():
        if len(indices[name.rpartition(".")[0]]) > 1:
            blocks[name] = size
        else:
            other += size
    return blocks, other


def _bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
