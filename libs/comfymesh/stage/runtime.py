"""Run one group of nodes: resolve inputs (in-process values or artifact refs), call each node, report.

Runs in a worker thread (node code is blocking torch / ImageMagick work); events go back to the
asyncio side through `emit`. Values stay in memory inside the group; only exported outputs are stored,
and they are stored by a writer thread while the next node runs (its inputs are the in-memory values),
so artifact writes stay off the job's critical path. A node's `done` goes out once its outputs are
stored; the group's call ends only after every write has finished (or failed, which fails that node).
Every IMAGE, MASK and LATENT a node makes is held to the per-node limits before anything uses it, and
failure messages name files relative to the data root, never by their absolute path.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from comfymesh import trace
from comfymesh.artifacts import ArtifactStore, decode_value, encode_value
from comfymesh.catalog import Catalog
from comfymesh.config import get_settings
from comfymesh.config.testing import node_hangs
from comfymesh.contracts import wirejson
from comfymesh.contracts.errors import NodeInputError
from comfymesh.contracts.failures import failure_from_exception
from comfymesh.contracts.values import ExecutionBlocker, blocked_value, blocker_of, list_items, list_value
from comfymesh.files import FilesStore
from comfymesh.graph.limits import OutputLimits
from comfymesh.logs import log_fields
from comfymesh.stage.lists import ValueList, map_node, merge_ui
from comfymesh.stage.node import NodeContext, NodeImpl
from comfymesh.v1 import common_pb2, stage_pb2

log = logging.getLogger("comfymesh.stage")


def _hang(ctx: NodeContext) -> None:
    log.warning("test fault: node %s (%s) hangs until cancelled", ctx.node_id, ctx.class_type)
    while True:
        ctx.check_cancelled()
        time.sleep(0.05)


Emit = Callable[[stage_pb2.StageEvent], None]
# one writer for every group of this process: writes are short, and one thread keeps them in order
_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="artifact-writer")
# an absolute path of two or more parts, not inside a URL or a relative path (`a/b`, `1/2`)
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])(?:/[\w.@+~-]+){2,}")


def data_relative(text: str, home: Path) -> str:
    """`text` with paths under the data root shown relative to it (`input/x.png`) and any other
    absolute path cut to its last part: where the server keeps its files is not the client's business."""
    for root in {str(home), os.path.realpath(home)}:
        text = text.replace(root.rstrip("/") + "/", "")
    return _ABSOLUTE_PATH.sub(lambda match: match[0].rsplit("/", 1)[1], text)


class GroupRun:
    """One RunStage call: the nodes of a group, executed in order."""

    def __init__(self, request: stage_pb2.StageRequest, nodes: dict[str, NodeImpl], catalog: Catalog,
                 store: ArtifactStore, home: Path, emit: Emit, cancelled: threading.Event,
                 limits: OutputLimits, files: FilesStore | None = None) -> None:
        self.request = request
        self.nodes = nodes
        self.catalog = catalog
        self.store = store
        self.home = home
        self.emit = emit
        self.cancelled = cancelled
        self.limits = limits
        self.files = files
        self.values: dict[tuple[str, int], Any] = {}
        self.exported = set(request.export_node_ids)
        self.prompt = wirejson.loads(request.prompt_json) if request.prompt_json else None
        self.extra_pnginfo = wirejson.loads(request.extra_pnginfo_json) if request.extra_pnginfo_json else None
        self.writes: list[tuple[stage_pb2.NodeCall, Future[None]]] = []

    def run(self) -> None:
        try:
            for call in self.request.nodes:
                try:
                    with trace.span(f"node {call.class_type}", {"node.id": call.node_id}):
                        self._run_node(call)
                except BaseException as exc:  # every failure is reported, never a hang
                    if not isinstance(exc, Exception):
                        raise
                    self._fail(call, exc)
                    return
        finally:
            self._finish_writes()

    def _fail(self, call: stage_pb2.NodeCall, exc: Exception) -> None:
        log.warning("node %s (%s) failed: %s", call.node_id, call.class_type, exc)
        failure = failure_from_exception(exc, call.node_id, call.class_type)
        failure.message = data_relative(failure.message, self.home)
        failure.details = data_relative(failure.details, self.home)
        self.emit(stage_pb2.StageEvent(failure=failure))

    def _finish_writes(self) -> None:
        """Wait for this group's pending writes; the first that failed fails its node."""
        for call, write in self.writes:
            try:
                write.result()
            except Exception as exc:
                self._fail(call, exc)
                return

    def _input(self, call: stage_pb2.NodeCall, name: str) -> Any:
        link = call.links[name]
        key = (link.node_id, link.slot)
        if key not in self.values:
            bound = self.request.bound_inputs.get(f"{link.node_id}:{link.slot}")
            if bound is None:
                raise NodeInputError(f"input '{name}' links to {link.node_id}:{link.slot}, which this call "
                                     "neither runs nor was given", node_id=call.node_id)
            self.values[key] = self._decode(bound)
        return self.values[key]

    def _decode(self, message: common_pb2.Value) -> Any:
        """A bound value: a list's items and a blocker keep their execution meaning."""
        items = list_items(message)
        if items is not None:
            return ValueList(self._decode(item) for item in items)
        blocker = blocker_of(message)
        return blocker if blocker is not None else decode_value(message, self.store)

    def _encode(self, type_name: str, value: Any) -> common_pb2.Value:
        if isinstance(value, ValueList):
            return list_value(type_name, [self._encode(type_name, item) for item in value])
        if isinstance(value, ExecutionBlocker):
            return blocked_value(type_name, value)
        return encode_value(type_name, value, self.store)

    def _run_node(self, call: stage_pb2.NodeCall) -> None:
        impl = self.nodes.get(call.class_type)
        if impl is None:
            raise NodeInputError(f"this stage does not run {call.class_type}", node_id=call.node_id)
        if self.cancelled.is_set():
            from comfymesh.contracts.errors import InterruptedError_
            raise InterruptedError_("Processing interrupted", node_id=call.node_id)
        self.emit(stage_pb2.StageEvent(started=stage_pb2.NodeStarted(node_id=call.node_id)))
        inputs: dict[str, Any] = wirejson.loads(call.literal_inputs_json) if call.literal_inputs_json else {}
        for name in call.links:
            inputs[name] = self._input(call, name)
        ctx = NodeContext(
            job_id=self.request.job_id, node_id=call.node_id, class_type=call.class_type, home=self.home,
            prompt=self.prompt, extra_pnginfo=self.extra_pnginfo,
            report_progress=lambda value, maximum: self.emit(stage_pb2.StageEvent(
                progress=stage_pb2.NodeProgress(node_id=call.node_id, value=value, max=maximum))),
            report_preview=self._preview_reporter(call.node_id),
            is_cancelled=self.cancelled.is_set,
            attempt_key=f"{self.request.job_id}:{call.node_id}", limits=self.limits,
            model_folders=self.catalog.folders, files=self.files)
        settings = get_settings()
        if node_hangs(settings, call.class_type):
            _hang(ctx)
        trace.mark(f"stage.node.{call.class_type}")
        definition = self.catalog.get(call.class_type)
        types = definition.outputs if definition else ()
        _refuse_blocked_output(call, definition.output_node if definition else call.is_output, inputs)
        started, clock = time.time(), time.perf_counter()
        uis: list[dict[str, Any]] = []

        def once(args: dict[str, Any]) -> tuple[Any, ...]:
            ctx.ui = None
            result = impl(ctx, **args)
            ctx.call_index += 1
            if ctx.ui:
                uis.append(ctx.ui)
            return tuple(result)

        outputs, _ = map_node(once, inputs, len(types), definition.output_is_list if definition else (),
                              definition.input_is_list if definition else False)
        ctx.ui = merge_ui(uis)
        if settings.node_timings:  # benchmarks: the mesh-overhead split in bench/
            log.info("node timing", extra=log_fields(job=self.request.job_id, node=call.node_id, class_type=call.class_type,
                                                     start=started, ms=round((time.perf_counter() - clock) * 1000, 3)))
        for type_name, value in zip(types, outputs, strict=False):  # before any other node or export sees it
            for item in value if isinstance(value, ValueList) else (value,):
                if not isinstance(item, ExecutionBlocker):
                    self.limits.check_value(call.node_id, call.class_type, type_name, item)
        for slot, value in enumerate(outputs):
            self.values[(call.node_id, slot)] = value
        trace.mark(f"stage.node_done.{call.class_type}")
        done = stage_pb2.NodeDone(node_id=call.node_id, ui_json=wirejson.dumps(ctx.ui) if ctx.ui else "")
        if call.node_id in self.exported and outputs:
            self.writes.append((call, _writer.submit(contextvars.copy_context().run, self._export, call, types,
                                                     outputs, done)))
        else:
            self.emit(stage_pb2.StageEvent(done=done))

    def _export(self, call: stage_pb2.NodeCall, types: tuple[str, ...], outputs: tuple[Any, ...],
                done: stage_pb2.NodeDone) -> None:
        """Store a node's outputs, then report it done (on the writer thread)."""
        done.outputs.extend(self._encode(types[slot], value) for slot, value in enumerate(outputs))
        for value in done.outputs:
            if value.WhichOneof("payload") == "tensor":  # audit trail of every artifact write
                log.info("artifact written", extra=log_fields(job=self.request.job_id, user=self.request.user,
                                                              node=call.node_id,
                                                              uri=value.tensor.uri, bytes=value.tensor.nbytes))
        self.emit(stage_pb2.StageEvent(done=done))

    def _preview_reporter(self, node_id: str) -> Callable[[bytes, str], None]:
        if not self.request.previews:
            return lambda data, fmt: None
        return lambda data, fmt: self.emit(stage_pb2.StageEvent(
            preview=stage_pb2.NodePreview(node_id=node_id, format=fmt, data=data)))


def _refuse_blocked_output(call: stage_pb2.NodeCall, output_node: bool, inputs: dict[str, Any]) -> None:
    """An output node given an ExecutionBlocker that carries a message fails with it, as in ComfyUI (one
    without a message just leaves the node's calls undone)."""
    if not output_node:
        return
    for value in inputs.values():
        for item in value if isinstance(value, ValueList) else (value,):
            if isinstance(item, ExecutionBlocker) and item.message is not None:
                raise NodeInputError(item.message, node_id=call.node_id)
