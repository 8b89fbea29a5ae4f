"""Pick the job store's backend from `COMFYMESH_DATABASE`: a SQLite file (the default) or a PostgreSQL URL."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from comfymesh.config import Settings
from comfymesh.jobs.protocol import AsyncJobStore
from comfymesh.jobs.sqlite_backend import SqliteJobStore

POSTGRES_SCHEMES = ("postgresql", "postgres")
ACCEPTED = "a SQLite file path, sqlite:///<path>, postgresql://user:password@host:port/db (or postgres://…)"


class UnknownDatabaseSchemeError(Exception):
    """COMFYMESH_DATABASE names a scheme no backend serves."""


def database_scheme(database: str) -> str:
    """'sqlite' or 'postgresql'; raises UnknownDatabaseSchemeError (naming the scheme, never the URL)."""
    if "://" not in database:
        return "sqlite"
    scheme = urlsplit(database).scheme.lower()
    if scheme == "sqlite":
        return "sqlite"
    if scheme in POSTGRES_SCHEMES:
        return "postgresql"
    raise UnknownDatabaseSchemeError(f"COMFYMESH_DATABASE has the scheme {scheme!r}, which no job store serves; "
                                     f"accepted: {ACCEPTED}")


def sqlite_path(settings: Settings) -> Path:
    database = settings.database
    if database.lower().startswith("sqlite://"):
        return Path(urlsplit(database).path)
    return settings.database_path


def describe(settings: Settings) -> str:
    """Where the jobs are, for logs: the file, or PostgreSQL's host:port/db (never the password)."""
    if database_scheme(settings.database) == "sqlite":
        return str(sqlite_path(settings))
    parts = urlsplit(settings.database)
    return f"PostgreSQL at {parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"


async def open_job_store(settings: Settings) -> AsyncJobStore:
    """Open the configured store. Raises DamagedDatabaseError (SQLite), DatabaseUnreachableError or
    SchemaTooNewError (PostgreSQL), UnknownDatabaseSchemeError."""
    if database_scheme(settings.database) == "sqlite":
        return SqliteJobStore(sqlite_path(settings))
    from comfymesh.jobs.postgres.store import PostgresJobStore  # asyncpg: the orchestrator extra only

    return await PostgresJobStore.open(settings.database, lease_ttl_s=settings.lease_ttl_s)
