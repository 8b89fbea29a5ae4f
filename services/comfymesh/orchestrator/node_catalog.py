"""The orchestrator's node catalog, as the stages describe themselves (plugins included).

Each stage sends its node declarations in its Describe answer; the merged catalog drives validation,
routing and `/object_info`. The last answers are kept in `<home>/cache/node_catalog.json`, so after a
restart jobs still validate while a stage is down (they wait in the queue for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from comfymesh.catalog import Catalog
from comfymesh.contracts import wirejson
from comfymesh.contracts.errors import StageUnavailableError
from comfymesh.orchestrator.local_nodes import local_entries
from comfymesh.orchestrator.replicas import ReplicaPool
from comfymesh.v1 import stage_pb2

log = logging.getLogger("comfymesh.orchestrator.node_catalog")
# how long a prompt naming an unknown node waits for a stage to declare it: longer while the mesh is
# starting (a diffusion stage takes seconds to import torch), under the gateway's 30 s deadline
STARTING_S = 60.0
WAIT_STARTING_S = 20.0
WAIT_S = 3.0


class NodeCatalog:
    """Keeps `catalog` equal to what the configured stages declare."""

    def __init__(self, catalog: Catalog, pool: ReplicaPool, cache_file: Path) -> None:
        self.catalog = catalog
        self.pool = pool
        self.cache_file = cache_file
        self._stages: dict[str, dict[str, Any]] = self._load()
        self._described = {stage: asyncio.Event() for stage in pool.configured()}
        self._started = time.monotonic()
        self._changed = asyncio.Condition()
        self._rebuild()
        pool.on_describe = self._described_by

    def _load(self) -> dict[str, dict[str, Any]]:
        with contextlib.suppress(OSError, ValueError):
            stages = json.loads(self.cache_file.read_text())
            if isinstance(stages, dict):
                return {stage: entries for stage, entries in stages.items() if isinstance(entries, dict)}
        return {}

    def _rebuild(self) -> None:
        merged: dict[str, Any] = local_entries()  # the nodes the orchestrator evaluates itself
        for stage, entries in self._stages.items():
            merged |= entries
            if stage in self._described:
                self._described[stage].set()
        self.catalog.replace(merged)

    def _described_by(self, stage: str, info: stage_pb2.DescribeResponse) -> None:
        for error in info.plugin_errors:
            log.error("the %s stage left out a node plugin: %s", stage, error)
        if not info.nodes_json:
            return
        entries = wirejson.loads(info.nodes_json)
        if entries == self._stages.get(stage):
            return
        self._stages[stage] = entries
        self._rebuild()  # whole, so a node a stage no longer declares (a removed plugin) goes
        self._save()
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _save(self) -> None:
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            part = self.cache_file.with_name(f".{self.cache_file.name}.{os.getpid()}.part")
            part.write_text(json.dumps(self._stages))
            part.replace(self.cache_file)
        except OSError as exc:  # the in-memory catalog still serves
            log.warning("could not keep the node catalog in %s: %s", self.cache_file.name, exc)

    async def describe_all(self, timeout: float = STARTING_S) -> None:
        """Ask every configured stage for its nodes (each waits for a replica up to `timeout`)."""
        async def one(stage: str) -> None:
            with contextlib.suppress(StageUnavailableError):
                await self.pool.describe(stage, timeout=timeout, fresh=True)

        await asyncio.gather(*(one(stage) for stage in self.pool.replicas))

    async def ready(self, timeout: float) -> None:
        """Wait (up to `timeout`) until every configured stage's nodes are known, live or from the file."""
        waiting = [event.wait() for event in self._described.values() if not event.is_set()]
        if waiting:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waiting), timeout)

    async def knows(self, class_types: set[str]) -> bool:
        """Whether every class type is in the catalog. An unknown one makes it ask the stages again (one
        may have restarted with a new plugin) and wait a little for a stage that declares it."""
        if class_types <= self.catalog.nodes.keys():
            return True
        starting = time.monotonic() - self._started < STARTING_S
        timeout = WAIT_STARTING_S if starting else WAIT_S
        asking = asyncio.create_task(self.describe_all(timeout=timeout))
        asking.add_done_callback(lambda _: asyncio.get_running_loop().create_task(self._notify()))
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait_for(lambda: class_types <= self.catalog.nodes.keys()
                                                              or asking.done()), timeout)
        return class_types <= self.catalog.nodes.keys()


__all__ = ["NodeCatalog"]
