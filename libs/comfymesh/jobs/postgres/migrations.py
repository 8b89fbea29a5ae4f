"""Versioned SQL migrations (`sql/NNNN_name.sql`), applied in order under a session advisory lock so
orchestrators starting together migrate once; a database migrated by newer code is refused."""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

# arbitrary, fixed advisory-lock keys (one bigint namespace per database)
MIGRATION_LOCK = 0x636D_0001
_TABLE = "CREATE TABLE IF NOT EXISTS comfymesh_schema (version INTEGER PRIMARY KEY, applied DOUBLE PRECISION NOT NULL)"


class SchemaTooNewError(Exception):
    """The database was migrated by a newer comfymesh: this code would misread it."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(f"the job database's schema is version {found}, newer than this comfymesh knows ({known}); "
                         "run the comfymesh version that migrated it, or a newer one")
        self.found = found
        self.known = known


def migrations() -> list[tuple[int, str]]:
    """(version, SQL) of every migration shipped, in order; versions are 1, 2, ... without gaps."""
    folder = resources.files("comfymesh.jobs.postgres").joinpath("sql")
    found = sorted((int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8"))
                   for entry in folder.iterdir() if entry.name.endswith(".sql"))
    assert [version for version, _ in found] == list(range(1, len(found) + 1)), "migration versions have a gap"
    return found


async def schema_version(conn: Any) -> int:
    return int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM comfymesh_schema"))


async def migrate(conn: Any, known: list[tuple[int, str]] | None = None) -> int:
    """Bring the schema up to the newest migration; returns its version. Raises SchemaTooNewError."""
    known = migrations() if known is None else known
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(_TABLE)
        current = await schema_version(conn)
        if current > len(known):
            raise SchemaTooNewError(current, len(known))
        for version, sql in known[current:]:
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO comfymesh_schema (version, applied) VALUES ($1, $2)",
                                   version, time.time())
        return len(known)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
