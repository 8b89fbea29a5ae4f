"""A model file the orchestrator meets for the first time is hashed for the cache keys off its event loop: a
30 GiB file takes about 20 s to read, and meanwhile the loop keeps answering (on an H100 a FLUX.2 Dev submit
timed out because the hash ran on the loop). A real scheduler over a real SQLite store, no stage configured."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from comfymesh.catalog import files
from comfymesh.config import Settings
from comfymesh.jobs import JobStore
from comfymesh.jobs.sqlite_backend import SqliteJobStore
from comfymesh.orchestrator.replicas import ReplicaPool
from comfymesh.orchestrator.scheduler import Scheduler
from tests.catalogs import builtin_nodes
from tests.mesh import SHARED
from tests.unit.test_file_digests import home  # noqa: F401 (fixture: a data root with no digests known)
from tests.unit.test_scheduler_poison import NODES, PROMPT, wait_until_finished


async def test_the_loop_keeps_running_while_a_new_file_is_hashed(home: Path,  # noqa: F811
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (home / "input").mkdir()
    shutil.copy(SHARED / "data" / "coffee.png", home / "input" / "example.png")
    # the nodes a stage declared before (the orchestrator's kept catalog), so the job is planned and signed
    (home / "cache").mkdir()
    (home / "cache" / "node_catalog.json").write_text(json.dumps({"imaging": builtin_nodes().object_info()}))
    hashing, release = threading.Event(), threading.Event()
    released: list[bool] = []
    real_sha256 = hashlib.sha256

    def held_sha256(*args: Any) -> Any:
        if not args:  # a file's hash, fed block by block (a signature hashes its bytes at once)
            hashing.set()  # ... lasting until the test lets it end
            released.append(release.wait(timeout=5))  # on the loop, the test could not release it: False
        return real_sha256(*args)

    monkeypatch.setattr(files.hashlib, "sha256", held_sha256)
    settings = Settings(home=home, max_running_jobs=1)
    store = JobStore(settings.database_path)
    store.add_job("first-use", 0, PROMPT, {}, "", ["3"], NODES)
    scheduler = Scheduler(settings, SqliteJobStore.over(store), ReplicaPool({}))
    dispatcher = asyncio.create_task(scheduler.run_forever())
    try:
        deadline = asyncio.get_running_loop().time() + 20
        while not hashing.is_set():
            assert asyncio.get_running_loop().time() < deadline and not dispatcher.done(), "the file was not hashed"
            await asyncio.sleep(0.01)
        release.set()  # the loop ran while the file was being read
        job = await wait_until_finished(store, "first-use")
    finally:
        dispatcher.cancel()
        await asyncio.gather(dispatcher, return_exceptions=True)
        store.close()
    assert released == [True]
    assert job.error["type"] == "stage_unavailable"  # signed and taken up to its stage (none configured here)
