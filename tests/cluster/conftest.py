"""The cluster tests' shared rig: one bridge with dnsmasq, PostgreSQL and SeaweedFS listening on its address
(the root namespace's side), for the whole session; each test module adds its own hosts and removes them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.cluster.rig import Rig, rig_or_skip
from tests.cluster.servers import missing_servers, servers_on
from tests.postgres import PostgresServer
from tests.seaweedfs import SeaweedServer


@dataclass
class Cluster:
    rig: Rig
    postgres: PostgresServer
    s3: SeaweedServer


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    rig = rig_or_skip(tmp_path_factory.mktemp("rig"))  # first: where no rig can run, the tests are skipped
    if reason := missing_servers():
        rig.stop()
        pytest.fail(reason)
    with servers_on(rig) as (postgres, s3):
        yield Cluster(rig, postgres, s3)
