"""A job's stage call ends at the first cancel, even when the stage's next message arrives in the same loop turn:
Python 3.11's asyncio.wait_for returned such a message and dropped the cancel, so a cancelled job streamed on
(seen in CI as a cross-orchestrator cancel that never took effect). Here the stream always has a message ready,
which makes that race happen on most turns."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from comfymesh.config.policies import RetryPolicy, TimeoutPolicy
from comfymesh.orchestrator.stage_call import GroupCall


class _ReadyStream:
    """A stage's event stream that never ends and has each message ready one loop turn after it is asked."""

    def __aiter__(self) -> _ReadyStream:
        return self

    async def __anext__(self) -> object:
        await asyncio.sleep(0)  # a read suspends once, as gRPC's does, and its message is there on the next turn
        return SimpleNamespace(kind="heartbeat")

    def cancel(self) -> None:
        pass


class _Stub:
    def RunStage(self, _request: Any, wait_for_ready: bool) -> _ReadyStream:  # gRPC's method name
        return _ReadyStream()


def _call() -> GroupCall:
    async def on_stage_event(_event: object) -> None:
        return None

    recorder: Any = SimpleNamespace(started=True, exported=set(), finished=set(), on_stage_event=on_stage_event)
    return GroupCall(recorder, pool=None, timeouts=TimeoutPolicy(), retry=RetryPolicy(),  # type: ignore[arg-type]
                     request=lambda *_: None)


async def test_every_cancel_of_a_streaming_stage_call_ends_it() -> None:
    request: Any = SimpleNamespace(export_node_ids=[], nodes=[SimpleNamespace(node_id="1")])
    for turns in range(60):  # cancel after 0..59 loop turns: every phase of a read
        task = asyncio.create_task(_call()._stream(_Stub(), request))
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()
        for _ in range(20):  # a cancel that took effect ends the task within a few turns
            await asyncio.sleep(0)
            if task.done():
                break
        assert task.cancelled(), f"cancelled after {turns} loop turns, the call still streams"
        if not task.done():
            task.cancel()
