"""One stage group's call: a replica from the pool, an attempt timeout, the heartbeat that every stage event
doubles as, and another attempt (on another replica) when the call was lost or failed retryably."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc

from comfymesh import trace
from comfymesh.config.policies import RetryPolicy, TimeoutPolicy
from comfymesh.contracts.errors import ComfymeshError, StageBusyError, StageUnavailableError, TimeoutExceededError
from comfymesh.graph import StageGroup
from comfymesh.logs import log_fields
from comfymesh.orchestrator.job_recorder import JobRecorder
from comfymesh.orchestrator.replicas import ReplicaPool
from comfymesh.rpc.status_codes import DRAINING_DETAILS, is_unavailable, refusal
from comfymesh.v1 import stage_pb2

log = logging.getLogger("comfymesh.orchestrator")
# a group's request for an attempt (numbered from 1)
RequestBuilder = Callable[[StageGroup, int], stage_pb2.StageRequest]

_draining: set[asyncio.Task[None]] = set()


def _drain(stream: Any) -> None:
    """Read a finished group's stream to its end in the background, so the call closes normally."""
    async def drain() -> None:
        with contextlib.suppress(Exception):
            async for _ in stream:
                pass

    task = asyncio.get_running_loop().create_task(drain())
    _draining.add(task)
    task.add_done_callback(_draining.discard)


def call_error(exc: grpc.aio.AioRpcError) -> ComfymeshError:
    """A failed stage call as our error: a lost replica (another may take the work) or a failed request.

    Raised `from None` by the caller: the message names the status, and the gRPC error's debug text (peer
    addresses) must not reach the job's record as its cause."""
    refused = refusal(exc)
    if refused:
        return StageBusyError(f"the stage refused the call: {refused}", draining=refused == DRAINING_DETAILS)
    if is_unavailable(exc):
        return StageUnavailableError(f"stage call lost: {exc.code().name} {exc.details()}")
    return ComfymeshError(f"stage call failed: {exc.code().name} {exc.details()}")


class GroupCall:
    """Runs stage groups of one job on replicas, recording what the stages report through `recorder`."""

    def __init__(self, recorder: JobRecorder, pool: ReplicaPool, timeouts: TimeoutPolicy, retry: RetryPolicy,
                 request: RequestBuilder) -> None:
        self.recorder = recorder
        self.pool = pool
        self.timeouts = timeouts
        self.retry = retry
        self.request = request

    async def run(self, group: StageGroup, checkpoint: str) -> None:
        """Run a group on a replica (one that holds `checkpoint`, if any does); a lost replica or a retryable
        failure moves the rest elsewhere."""
        tried: set[str] = set()
        error: ComfymeshError | None = None
        attempt = 0
        while attempt < self.retry.max_attempts:
            attempt += 1
            replica = await self.pool.acquire(group.stage, avoid=tried, prefer_model=checkpoint)
            tried.add(replica.address)
            lost = False
            refused: StageBusyError | None = None
            began = time.monotonic()
            try:
                async with asyncio.timeout(self.timeouts.attempt_s):
                    await self._stream(replica.stub, self.request(group, attempt))
                if checkpoint:
                    replica.models.add(checkpoint)  # its model cache now holds the weights
                return
            except StageBusyError as busy:
                refused = busy
            except TimeoutError:
                node_id = self.recorder.current_node(group.node_ids)
                error = TimeoutExceededError(f"a {group.stage} stage call ran longer than its "
                                             f"{self.timeouts.attempt_s:g} s attempt timeout", node_id=node_id,
                                             details="attempt", non_retryable=False)
            except StageUnavailableError as exc:
                lost = True
                error = exc
            except ComfymeshError as exc:
                if exc.non_retryable:
                    raise
                error = exc
            finally:
                seconds = self.recorder.stage_seconds
                seconds[group.stage] = seconds.get(group.stage, 0.0) + time.monotonic() - began
                if refused is not None:
                    await self.pool.refused(replica, draining=refused.draining)
                else:
                    await self.pool.release(replica, failed=lost)
            if refused is not None:
                # refused before anything ran: another replica, or this one after a backoff; not an attempt
                attempt -= 1
                continue
            assert error is not None
            self.recorder.running_nodes -= set(group.node_ids)
            log.warning("stage call failed, retrying", extra=log_fields(
                job=self.recorder.job.id, group=group.group_id, stage=group.stage, replica=replica.address,
                attempt=attempt, error=str(error)))
            await self.recorder.record_retry(group.group_id, attempt, error)
            await asyncio.sleep(self.retry.backoff(attempt))
        assert error is not None
        raise error

    async def _stream(self, stub: Any, request: stage_pb2.StageRequest) -> None:
        """One attempt: send the request and record the stage's events until the group's nodes are done."""
        recorder = self.recorder
        recorder.exported.update(request.export_node_ids)
        # wait_for_ready: a replica that is restarting is waited for, not failed at once
        trace.mark("orchestrator.call_stage")
        call = stub.RunStage(request, wait_for_ready=True)
        stream = call.__aiter__()
        if not recorder.started:
            # one loop turn hands the request to gRPC, whose own threads send it; the job's `started` is
            # written meanwhile, still ahead of every event of the stage (read below, after it)
            await asyncio.sleep(0)
            try:
                await recorder.record_start()
            except BaseException:
                call.cancel()
                raise
        try:
            while True:
                try:
                    # asyncio.timeout, not wait_for: Python 3.11's wait_for returns a message that arrives as
                    # the job is cancelled and drops the cancel (the job then hangs on, cancelled once already)
                    async with asyncio.timeout(self.timeouts.heartbeat_s):
                        event = await stream.__anext__()
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    call.cancel()
                    node_id = recorder.current_node([c.node_id for c in request.nodes])
                    raise TimeoutExceededError(
                        f"the stage sent no heartbeat for {self.timeouts.heartbeat_s:g} s"
                        + (f" while running node {node_id}" if node_id else ""), node_id=node_id,
                        details="heartbeat", non_retryable=False) from None
                await recorder.on_stage_event(event)
                if all(c.node_id in recorder.finished for c in request.nodes):
                    # the group's results are all in: the stream's end (the stage's trailers) is not waited for
                    _drain(stream)
                    return
        except grpc.aio.AioRpcError as exc:
            raise call_error(exc) from None
        missing = [c.node_id for c in request.nodes if c.node_id not in recorder.finished]
        if missing:
            raise StageUnavailableError(f"stage call ended before nodes {', '.join(missing)} finished")
