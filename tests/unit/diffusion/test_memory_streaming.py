"""memory.streaming's per-call accounting: each call's time and the part of it spent waiting on block copies, counted
and logged once the call has run (on the CPU the copies run inline, so their whole time is waiting)."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from comfymesh.diffusion.memory import offload_plan
from comfymesh.diffusion.memory.streaming import offload, streamer_of

CPU = torch.device("cpu")


class _Stack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj_in = nn.Linear(64, 64)
        self.blocks = nn.ModuleList(nn.Linear(64, 64) for _ in range(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(x)
        for block in self.blocks:
            x = torch.relu(block(x))
        return x


def test_each_call_counts_its_time_and_its_wait_on_copies(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    model = _Stack().eval()
    blocks, other = offload_plan.module_blocks(model)
    plan = offload_plan.plan("stack", blocks, other, offload_plan.minimum_bytes(blocks, other) + blocks["blocks.0"])
    assert plan.resident == ("blocks.0",) and len(plan.streamed) == 4
    offload(model, plan, CPU)
    streamer = streamer_of(model)
    assert streamer is not None and streamer.calls == 0
    with caplog.at_level(logging.INFO, logger="comfymesh.diffusion.memory.streaming"), torch.no_grad():
        model(torch.randn(2, 64))
        model(torch.randn(2, 64))
    assert streamer.calls == 2 and streamer.copies == 8
    assert 0 < streamer.copy_wait_s < streamer.call_s
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("streamed call of stack:")]
    assert len(lines) == 2 and "waiting on block copies" in lines[0]


def test_a_call_that_fails_is_still_counted() -> None:
    model = _Stack().eval()
    blocks, other = offload_plan.module_blocks(model)
    offload(model, offload_plan.plan("stack", blocks, other, offload_plan.minimum_bytes(blocks, other)), CPU)
    streamer = streamer_of(model)
    assert streamer is not None
    with pytest.raises(RuntimeError), torch.no_grad():
        model(torch.randn(2, 3))  # the wrong width: proj_in fails inside the call
    assert streamer.calls == 1 and streamer.inflight == {}
