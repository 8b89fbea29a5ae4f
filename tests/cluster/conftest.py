"""The cluster tests' shared rig: one bridge with dnsmasq, PostgreSQL and SeaweedFS listening on its address
(the root namespace's side), for the whole session; each test module adds its own hosts and removes them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.cluster.rig import Rig, rig_or_skip
from tests.postgres import BIN, PostgresServer
from tests.seaweedfs import SeaweedServer, weed_binary


@dataclass
class Cluster:
    rig: Rig
    postgres: PostgresServer
    s3: SeaweedServer


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    rig = rig_or_skip(tmp_path_factory.mktemp("rig"))  # first: where no rig can run, the tests are skipped
    binary = weed_binary()
    if not (BIN / "initdb").exists() or binary is None:
        rig.stop()
        pytest.fail(f"PostgreSQL 15 ({BIN / 'initdb'}) or SeaweedFS's `weed` is missing: run `make setup`")
    postgres: PostgresServer | None = None
    s3: SeaweedServer | None = None
    try:
        postgres = PostgresServer(host=rig.bridge_ip).start()
        s3 = SeaweedServer(binary, host=rig.bridge_ip).start()
        yield Cluster(rig, postgres, s3)
    finally:  # the servers first: with its address gone from the bridge, weed takes 20 s to stop
        try:
            if s3 is not None:
                s3.stop()
        finally:
            try:
                if postgres is not None:
                    postgres.stop()
            finally:
                rig.stop()
