"""Acceptance 5 of issue 18 across hosts: stage hosts found through real DNS (dnsmasq on the rig's bridge, each
host's resolv.conf pointing at it). A host added to the name (addn-hosts + SIGHUP) gets a RunStage within
10 s; a host that drains (SIGTERM: NOT_SERVING) gets no new call after 2 s and finishes its calls in flight."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.cluster.conftest import Cluster
from tests.cluster.rig import Host
from tests.cluster.roles import STAGE_PORT, Gateway, calls, start_control, start_stage
from tests.integration.test_dns_discovery import blur


@dataclass
class DnsCluster:
    cluster: Cluster
    stages: list[Host]
    gateway: Gateway


@pytest.fixture(scope="module")
def dns(cluster: Cluster) -> Iterator[DnsCluster]:
    rig = cluster.rig
    hosts: list[Host] = []
    gateway: Gateway | None = None
    try:
        stages = [rig.add_host(f"dnsstage{i}", cpus=1.0) for i in range(2)]
        control = rig.add_host("dnsctl")
        hosts += [*stages, control]
        name = rig.dns_set("dnsimaging", [stages[0].ip])  # the second host is up but not in DNS yet
        env = {"COMFYMESH_FILES_URL": cluster.s3.new_url(),
               "COMFYMESH_FILES_STORAGE_OPTIONS": json.dumps(cluster.s3.options()),
               "COMFYMESH_ARTIFACTS_URL": (rig.root / "artifacts").as_uri(),
               "COMFYMESH_DATABASE": cluster.postgres.new_database(),
               "COMFYMESH_IMAGING_REPLICAS": f"dns:///{name}:{STAGE_PORT}", "COMFYMESH_DIFFUSION_REPLICAS": "",
               "COMFYMESH_STAGE_DRAIN_S": "60"}
        for i, host in enumerate(stages):
            start_stage(rig, host, f"dnsimaging{i}", env)
        start_control(rig, control, "-dns", env)
        gateway = Gateway(rig, control)
        gateway.wait_ready()
        yield DnsCluster(cluster, stages, gateway)
    finally:
        if gateway is not None:
            gateway.close()
        for host in hosts:
            rig.remove_host(host)


COLORS = iter(range(0x300000, 0x400000, 7))


def test_a_host_added_to_dns_gets_a_run_stage_within_10_s(dns: DnsCluster) -> None:
    rig, gateway = dns.cluster.rig, dns.gateway
    for _ in range(3):
        assert gateway.wait(gateway.submit(blur(next(COLORS))))["status"] == "completed"
    assert calls(rig, "dnsimaging0") >= 3 and calls(rig, "dnsimaging1") == 0  # not in DNS yet
    rig.dns_set("dnsimaging", [host.ip for host in dns.stages])
    added = time.monotonic()
    while calls(rig, "dnsimaging1") == 0:
        assert time.monotonic() - added < 10, "the added host got no RunStage within 10 s"
        assert gateway.wait(gateway.submit(blur(next(COLORS))))["status"] == "completed"


def test_a_draining_host_gets_no_new_call_after_2_s_and_finishes_its_calls(dns: DnsCluster) -> None:
    rig, gateway = dns.cluster.rig, dns.gateway
    # two slow jobs at once: the second goes to the host the first left free
    slow = [gateway.submit(blur(next(COLORS), size=640, blurs=6)) for _ in range(2)]
    deadline = time.monotonic() + 60
    while not all(calls(rig, "dnsimaging0", j) + calls(rig, "dnsimaging1", j) for j in slow):
        assert time.monotonic() < deadline, "the slow jobs never started"
        time.sleep(0.05)  # the poll's interval: the loop ends once both calls are logged
    on_second = next(j for j in slow if calls(rig, "dnsimaging1", j))
    stage = rig.service("dnsimaging1").process
    assert stage is not None
    os.kill(stage.pid, signal.SIGTERM)
    drained = time.monotonic()
    assert gateway.job(on_second)["status"] == "running"
    time.sleep(2.0)  # the acceptance's window: a call sent after it must not reach the draining host
    before = calls(rig, "dnsimaging1")
    quick = [gateway.submit(blur(next(COLORS))) for _ in range(4)]
    for job_id in quick:
        assert gateway.wait(job_id)["status"] == "completed"
    assert calls(rig, "dnsimaging1") == before, "a call reached the draining host"
    for job_id in slow:  # its call in flight finished on the draining host
        assert gateway.wait(job_id, timeout=120)["status"] == "completed", rig.logs[-20:]
    assert stage.wait(timeout=60) == 0  # exits by itself once drained
    assert time.monotonic() - drained < 60
