"""PostgreSQL and SeaweedFS on a started rig's bridge address, as the cluster tests and bench/scale_out.py use
them; stopped before the rig (with its address gone from the bridge, weed takes 20 s to stop)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tests.cluster.rig import Rig
from tests.postgres import BIN, PostgresServer
from tests.seaweedfs import SeaweedServer, weed_binary


def missing_servers() -> str:
    """Why the servers cannot start here (empty when they can)."""
    if not (BIN / "initdb").exists() or weed_binary() is None:
        return f"PostgreSQL 15 ({BIN / 'initdb'}) or SeaweedFS's `weed` is missing: run `make setup`"
    return ""


@contextlib.contextmanager
def servers_on(rig: Rig) -> Iterator[tuple[PostgresServer, SeaweedServer]]:
    """Both servers on `rig`'s bridge; on the way out they stop, then the rig, also on failure."""
    binary = weed_binary()
    assert binary is not None, missing_servers()
    postgres: PostgresServer | None = None
    s3: SeaweedServer | None = None
    try:
        postgres = PostgresServer(host=rig.bridge_ip).start()
        s3 = SeaweedServer(binary, host=rig.bridge_ip).start()
        yield postgres, s3
    finally:
        try:
            if s3 is not None:
                s3.stop()
        finally:
            try:
                if postgres is not None:
                    postgres.stop()
            finally:
                rig.stop()

