"""Test-only fault switches: the one place production code asks whether a test wants a fault injected.

Each switch is a `COMFYMESH_TEST_*` variable, part of `Settings`, off by default; never set one in
production. They let the tests drive failures a real deployment meets rarely (a stage gone silent, a GPU
out of memory) through the real services:
- COMFYMESH_TEST_HANG_NODES: comma-separated node classes that hang silently (no progress, no
  heartbeat) until cancelled, so heartbeat and timeout handling can be seen to work;
- COMFYMESH_TEST_FAULT_OOM: every sampling call fails as a CUDA out-of-memory would (a retryable
  resource error).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class FaultSwitches(BaseModel):
    """The test fault switches' part of `Settings`."""

    model_config = ConfigDict(frozen=True)

    test_hang_nodes: str = Field("", description="test only: comma-separated node classes that hang silently "
                                                 "until cancelled")
    test_fault_oom: bool = Field(False, description="test only: sampling fails as a CUDA out-of-memory would")


def node_hangs(switches: FaultSwitches, class_type: str) -> bool:
    """Whether a test asked nodes of `class_type` to hang until cancelled."""
    return class_type in {name.strip() for name in switches.test_hang_nodes.split(",") if name.strip()}


def sampling_out_of_memory(switches: FaultSwitches) -> bool:
    """Whether a test asked sampling to fail as a CUDA out-of-memory would."""
    return switches.test_fault_oom
