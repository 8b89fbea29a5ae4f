"""A model placed across devices as a SplitPlan says: each block on its stage's device, everything else on the first,
and forward pre-hooks that move each called module's tensor inputs to its device, so hidden states follow the
blocks and come back for the output layers. Only device moves: the kernels and weights are the unsplit model's.

The hooks sit on the model's top-level children and on each block of its top-level ModuleLists (a ModuleList is
never called itself); diffusers' transformers call them in order: embedders, blocks, norm_out / proj_out.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from comfymesh.diffusion.memory.split_plan import SplitPlan

log = logging.getLogger(__name__)


def _to(value: Any, device: torch.device) -> Any:
    """`value` with every tensor in it (through plain tuples, lists and dicts) on `device`; other containers (a
    model's output dataclass) as they are."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if type(value) is tuple:
        return tuple(_to(v, device) for v in value)
    if type(value) is list:
        return [_to(v, device) for v in value]
    if type(value) is dict:
        return {k: _to(v, device) for k, v in value.items()}
    return value


class SplitPlacement:
    """The hooks of a model placed by `place_split` (`remove` takes them off; the weights stay where they are).
    `transfers` counts the stage changes of the last model call (hidden states moved between devices)."""

    def __init__(self, model: nn.Module, plan: SplitPlan, devices: Sequence[torch.device]) -> None:
        self.model = model
        self.plan = plan
        self.devices = list(devices)
        self.transfers = 0
        self._stage = 0
        self.handles: list[RemovableHandle] = [
            model.register_forward_pre_hook(lambda _m, _a: self._start()),
            # the output on the first device, whichever module made it
            model.register_forward_hook(lambda _m, _a, out: _to(out, self.devices[0])),
        ]

    def _start(self) -> None:
        self.transfers = 0
        self._stage = 0

    def hook(self, module: nn.Module, stage: int) -> None:
        """Move `module`'s tensor args and kwargs to its stage's device before it runs."""
        device = self.devices[stage]

        def enter(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
                  ) -> tuple[tuple[Any, ...], dict[str, Any]]:
            if stage != self._stage:
                self.transfers += 1
                self._stage = stage
            moved: tuple[tuple[Any, ...], dict[str, Any]] = (_to(args, device), _to(kwargs, device))
            return moved

        self.handles.append(module.register_forward_pre_hook(enter, with_kwargs=True))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        _placements.pop(self.model, None)


def place_split(model: nn.Module, plan: SplitPlan, devices: Sequence[torch.device | str]) -> SplitPlacement:
    """Move `model`'s blocks to their stages' devices (`devices[i]` runs `plan.stages[i]`) and the rest to the
    first, and hook every top-level child and block to move its inputs there; logs the plan."""
    if len(devices) != len(plan.stages):
        raise ValueError(f"{plan.name}: the split plan has {len(plan.stages)} stages but {len(devices)} devices "
                         "were given")
    targets = [torch.device(d) for d in devices]
    placement = SplitPlacement(model, plan, targets)
    first = targets[0]
    for key, param in model._parameters.items():  # the model's own tensors (no child holds them)
        if param is not None:
            model._parameters[key] = nn.Parameter(param.detach().to(first), requires_grad=param.requires_grad)
    for key, buffer in model._buffers.items():
        if buffer is not None:
            model._buffers[key] = buffer.to(first)
    for name, child in model.named_children():
        if isinstance(child, nn.ModuleList):
            for index, block in enumerate(child):
                stage = plan.stage_of(f"{name}.{index}")
                block.to(targets[stage])
                placement.hook(block, stage)
        else:
            child.to(first)
            placement.hook(child, 0)
    _placements[model] = placement
    log.info("memory plan %s", plan.describe())
    return placement


def split_of(model: nn.Module) -> SplitPlacement | None:
    """The placement of a model split across devices, None for one on a single device."""
    return _placements.get(model)


_placements: weakref.WeakKeyDictionary[nn.Module, SplitPlacement] = weakref.WeakKeyDictionary()
