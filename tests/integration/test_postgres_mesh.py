"""The mesh with its jobs in a real PostgreSQL 15 (COMFYMESH_DATABASE=postgresql://…): jobs run, their events
stream in id order from the shared log, and the node cache serves a rerun."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from tests.mesh import SHARED, Mesh
from tests.postgres import PostgresServer, postgres  # noqa: F401 (fixture)


def invert_graph(prefix: str) -> dict[str, Any]:
    return {"1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}}}


@pytest.fixture(scope="module")
def pg_mesh(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer) -> Iterator[tuple[Mesh, str]]:  # noqa: F811
    home = tmp_path_factory.mktemp("pg")
    url = postgres.new_database()
    mesh = Mesh(home, env={"COMFYMESH_DATABASE": url})
    shutil.copy(SHARED / "data" / "coffee.png", home / "input" / "example.png")
    try:
        yield mesh.start(), url
    finally:
        mesh.stop()


async def rows(url: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


def test_a_job_runs_with_its_rows_in_postgresql(pg_mesh: tuple[Mesh, str]) -> None:
    mesh, url = pg_mesh
    job_id = mesh.submit(invert_graph("pg"))
    job = mesh.wait(job_id, timeout=60)
    assert job["status"] == "completed", job
    events = mesh.events(f"/v1/jobs/{job_id}/events")
    ids = [event["id"] for event in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert events[0]["event"] == "queued" and events[-1]["event"] == "completed"
    [row] = asyncio.run(rows(url, "SELECT status, owner, lease_until, epoch FROM jobs WHERE id = $1", job_id))
    assert (row["status"], row["owner"], row["lease_until"], row["epoch"]) == ("completed", None, None, 1)
    stored = asyncio.run(rows(url, "SELECT type FROM events WHERE job_id = $1 ORDER BY id", job_id))
    assert [r["type"] for r in stored] == [event["event"] for event in events]


def test_a_rerun_is_served_from_the_cache_in_postgresql(pg_mesh: tuple[Mesh, str]) -> None:
    mesh, url = pg_mesh
    first = mesh.wait(mesh.submit(invert_graph("again")), timeout=60)
    second_id = mesh.submit(invert_graph("again"))
    second = mesh.wait(second_id, timeout=60)
    assert first["status"] == second["status"] == "completed"
    types = [event["event"] for event in mesh.events(f"/v1/jobs/{second_id}/events")]
    assert "cached" in types
    assert asyncio.run(rows(url, "SELECT COUNT(*) AS n FROM node_cache"))[0]["n"] >= 1
