"""A real PostgreSQL 15 for tests: initdb + pg_ctl in a temp dir on a free loopback port (Debian's
`postgresql` package, installed by `make system-deps`); as root it runs as the postgres user."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mesh import free_port

BIN = Path(os.environ.get("COMFYMESH_PG_BIN", "/usr/lib/postgresql/15/bin"))


class PostgresServer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        """`host`: the address it listens on besides 127.0.0.1, trusted for its /24 (tests/cluster's bridge)."""
        self.host = host
        self.root = Path(tempfile.mkdtemp(prefix="comfymesh-pg-"))
        self.port = free_port()
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"

    def _run(self, *args: str) -> None:
        command = [str(BIN / args[0]), *args[1:]]
        if os.geteuid() == 0:  # initdb refuses root
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> PostgresServer:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        listen = "127.0.0.1"
        if self.host != "127.0.0.1":
            listen += f",{self.host}"
            with open(self.data / "pg_hba.conf", "a") as hba:
                hba.write(f"host all all {self.host.rsplit('.', 1)[0]}.0/24 trust\n")
        # -l: without a log file pg_ctl waits on the server's stdout and hangs
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start", "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses={listen} -c fsync=off -c max_connections=200")
        return self

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database's URL (each test gets its own)."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        subprocess.run([str(BIN / "psql"), "-h", self.host, "-p", str(self.port), "-U", "postgres", "-q", "-c",
                        f"CREATE DATABASE {name}"], check=True, capture_output=True, timeout=60)
        return self.url(name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    if not (BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL 15 is not installed ({BIN / 'initdb'} is missing): `make system-deps` installs "
                    "Debian's postgresql package")
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()
