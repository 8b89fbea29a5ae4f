"""Acceptance 3 of issue 18, sized for CI: small imaging jobs on 2 orchestrators (PostgreSQL store, 3 s leases)
and 3 imaging stage hosts found through DNS, outputs in S3 (SeaweedFS). One orchestrator and one stage host are
kill -9'd; once the dead orchestrator's jobs are re-queued it comes back, and the other orchestrator is cut off
PostgreSQL (nft drop) for 2×TTL. Every job must complete once with one output object, readable through the
gateway that did not take it; no write of an orchestrator whose lease was taken over may land.

Fenced writes are audited in PostgreSQL itself: triggers record which host (inet_client_addr) claimed each
epoch of a job and which host wrote each event; a job's event written by a host other than the claimer of
the job's current epoch is a fenced write that was accepted."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from tests.cluster.conftest import Cluster
from tests.cluster.rig import Host
from tests.cluster.roles import ORCHESTRATOR_PORT, STAGE_PORT, Gateway, start_control, start_stage
from tests.integration.test_dns_discovery import blur

TTL_S = 3.0
JOBS = 60  # acceptance 3's count; the run takes ~20 s after a ~25 s start on 2 shared cores
AUDIT = """
CREATE TABLE audit_claims (job_id TEXT, epoch BIGINT, owner TEXT, client INET, at TIMESTAMPTZ);
CREATE TABLE audit_events (event_id BIGINT, job_id TEXT, type TEXT, epoch BIGINT, client INET);
CREATE FUNCTION audit_claim() RETURNS trigger AS $$ BEGIN
  IF NEW.owner IS NOT NULL AND NEW.epoch IS DISTINCT FROM OLD.epoch THEN
    INSERT INTO audit_claims VALUES (NEW.id, NEW.epoch, NEW.owner, inet_client_addr(), clock_timestamp());
  END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER audit_claim AFTER UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION audit_claim();
CREATE FUNCTION audit_event() RETURNS trigger AS $$ BEGIN
  INSERT INTO audit_events SELECT NEW.id, NEW.job_id, NEW.type, j.epoch, inet_client_addr()
    FROM jobs j WHERE j.id = NEW.job_id;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER audit_event AFTER INSERT ON events FOR EACH ROW EXECUTE FUNCTION audit_event();
"""
# events only the job's holder writes (queued, requeued and cancelled come from whoever submits or re-queues)
HOLDER_EVENTS = ["started", "cached", "node_running", "node_progress", "node_done", "retrying", "completed",
                 "failed"]


def sql(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


def sql_script(url: str, script: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(script)  # no arguments: the simple protocol, several statements at once
        finally:
            await conn.close()

    asyncio.run(run())


@dataclass
class ChaosCluster:
    cluster: Cluster
    control: list[Host]
    stages: list[Host]
    gateways: list[Gateway]
    database: str
    files_url: str


@pytest.fixture(scope="module")
def chaos(cluster: Cluster) -> Iterator[ChaosCluster]:
    rig = cluster.rig
    hosts: list[Host] = []
    gateways: list[Gateway] = []
    try:
        stages = [rig.add_host(f"chstage{i}", cpus=0.5) for i in range(3)]
        control = [rig.add_host(f"chctl{i}", cpus=0.5) for i in range(2)]
        hosts += [*stages, *control]
        imaging = rig.dns_set("chimaging", [host.ip for host in stages])
        orchestrators = rig.dns_set("chorchestrator", [host.ip for host in control])
        database, files_url = cluster.postgres.new_database(), cluster.s3.new_url()
        env = {"COMFYMESH_FILES_URL": files_url, "COMFYMESH_FILES_STORAGE_OPTIONS": json.dumps(cluster.s3.options()),
               "COMFYMESH_ARTIFACTS_URL": (rig.root / "chaos-artifacts").as_uri(), "COMFYMESH_DATABASE": database,
               "COMFYMESH_LEASE_TTL_S": str(TTL_S), "COMFYMESH_MAX_ATTEMPTS": "20",
               "COMFYMESH_IMAGING_REPLICAS": f"dns:///{imaging}:{STAGE_PORT}", "COMFYMESH_DIFFUSION_REPLICAS": ""}
        for i, host in enumerate(stages):
            start_stage(rig, host, f"chimaging{i}", env)
        for i, host in enumerate(control):
            start_control(rig, host, str(i), env, orchestrators=f"dns:///{orchestrators}:{ORCHESTRATOR_PORT}")
            gateways.append(Gateway(rig, host))
        for gateway in gateways:
            gateway.wait_ready()
        sql_script(database, AUDIT)  # the orchestrators migrated the schema before they listened
        yield ChaosCluster(cluster, control, stages, gateways, database, files_url)
    finally:
        for gateway in gateways:
            gateway.close()
        for host in hosts:
            rig.remove_host(host)


def _running_on(chaos: ChaosCluster, host: Host, since: float) -> list[str]:
    """Jobs running under a lease `host` took after `since` (a time.time())."""
    return [row[0] for row in sql(
        chaos.database, "SELECT j.id FROM jobs j JOIN audit_claims c ON c.job_id = j.id AND c.epoch = j.epoch "
        "WHERE j.status = 'running' AND c.client = $1::inet AND c.at >= to_timestamp($2)", host.ip, since)]


def _wait_running_on(chaos: ChaosCluster, host: Host, since: float) -> list[str]:
    deadline = time.monotonic() + 60
    while not (running := _running_on(chaos, host, since)):
        assert time.monotonic() < deadline, f"{host.name} never ran a job"
        time.sleep(0.05)  # the poll's interval: the loop ends once the host holds a job
    return running


def _history(chaos: ChaosCluster, job_id: str) -> list[str]:
    """A job's events with the host that wrote each and the host that claimed its epoch (for a failure)."""
    return [f"{row['type']} epoch={row['epoch']} writer={row['writer']} holder={row['holder']}" for row in sql(
        chaos.database, "SELECT e.type, e.epoch, e.client AS writer, c.client AS holder FROM audit_events e "
        "LEFT JOIN audit_claims c ON c.job_id = e.job_id AND c.epoch = e.epoch WHERE e.job_id = $1 "
        "ORDER BY e.event_id", job_id)]


def _submit(chaos: ChaosCluster, first: int, count: int) -> dict[str, int]:
    """Jobs first…first+count-1, alternating gateways: job id -> the gateway index that took it."""
    taken = {}
    for i in range(first, first + count):
        prompt = blur(0x500000 + i, size=128, blurs=2)
        prompt["save"]["inputs"]["filename_prefix"] = f"cluster/c{i}"
        taken[chaos.gateways[i % 2].submit(prompt, key=f"cluster-chaos-{i}")] = i
    return taken


def test_jobs_survive_a_killed_orchestrator_a_killed_host_and_a_cut_off_database(chaos: ChaosCluster) -> None:
    rig, database = chaos.cluster.rig, chaos.database
    started = time.time()
    jobs = _submit(chaos, 0, JOBS // 2)
    _wait_running_on(chaos, chaos.control[0], started)

    # kill -9 orchestrator 0 and every process of stage host 2
    killed_at = time.time()
    rig.kill(chaos.control[0], ("orchestrator0",))
    rig.kill(chaos.stages[2])
    orphans = _running_on(chaos, chaos.control[0], started)  # frozen now: nobody renews or re-queues them yet
    assert orphans
    deadline = time.monotonic() + 3 * TTL_S + 10
    while True:
        requeued = {row[0]: row[1] for row in sql(
            database, "SELECT job_id, MIN(ts) FROM events WHERE type = 'requeued' AND ts >= $1 "
            "AND job_id = ANY($2::text[]) GROUP BY job_id", killed_at, orphans)}
        if len(requeued) == len(orphans):
            break
        assert time.monotonic() < deadline, f"re-queued {len(requeued)} of {len(orphans)} orphaned jobs"
        time.sleep(0.1)  # the poll's interval: the loop ends once every orphan is re-queued
    late = {job: round(at - killed_at, 2) for job, at in requeued.items() if at - killed_at > TTL_S + 2}
    assert not late, f"re-queued later than TTL+2 s after the kill: {late}"

    # orchestrator 0 comes back (it re-queues for the other); orchestrator 1 loses PostgreSQL for 2×TTL
    rig.start_service(rig.service("orchestrator0"))
    cut_from = time.time()
    jobs |= _submit(chaos, JOBS // 2, JOBS - JOBS // 2)
    extra = JOBS
    while True:
        _wait_running_on(chaos, chaos.control[1], cut_from)
        rig.drop(chaos.control[1], rig.bridge_ip, chaos.cluster.postgres.port)
        # its job may have finished between the look and the cut: then orchestrator 1 holds nothing to lose
        if _running_on(chaos, chaos.control[1], cut_from):
            break
        rig.heal(chaos.control[1])
        assert extra < JOBS + 20, "orchestrator 1 never held a job when cut off"
        jobs |= _submit(chaos, extra, 4)  # more work to be holding when cut off next time
        extra += 4
    try:
        time.sleep(2 * TTL_S)  # the fault's length, not a wait for readiness
    finally:
        rig.heal(chaos.control[1])

    deadline = time.monotonic() + 150
    pending = set(jobs)
    while pending:
        assert time.monotonic() < deadline, f"{len(pending)} jobs never finished:\n" + "\n".join(rig.logs[-30:])
        for job_id in sorted(pending):
            try:
                status = chaos.gateways[0].job(job_id)["status"]
            except httpx.HTTPError:  # a gateway call may time out while an orchestrator is cut off
                continue
            if status in ("completed", "failed", "cancelled"):
                assert status == "completed", f"{job_id} {status}:\n" + "\n".join(_history(chaos, job_id))
                pending.discard(job_id)
        time.sleep(0.2)  # the poll's interval: the loop ends once every job is finished

    completed = dict(sql(database, "SELECT job_id, COUNT(*) FROM events WHERE type = 'completed' GROUP BY job_id"))
    assert {job: completed.get(job, 0) for job in jobs} == {job: 1 for job in jobs}
    # each job taken from orchestrator 1 during the cut: it finds out once PostgreSQL answers again (a write
    # refused by its epoch, or a renewal that finds the lease gone) and stops driving the job
    taken_over = [row[0] for row in sql(
        database, "SELECT e.job_id FROM audit_events e JOIN audit_claims c ON c.job_id = e.job_id "
        "AND c.epoch = e.epoch - 1 JOIN events v ON v.id = e.event_id WHERE e.type = 'requeued' "
        "AND v.ts >= $1 AND c.client = $2::inet", cut_from, chaos.control[1].ip)]
    assert taken_over, "the cut took no job from orchestrator 1"
    deadline = time.monotonic() + 30
    while unnoticed := [job for job in taken_over if not any(
            line.startswith("orchestrator1: ") and "lease lost" in line and job in line for line in list(rig.logs))]:
        assert time.monotonic() < deadline, f"orchestrator 1 never noticed it lost {unnoticed}"
        time.sleep(0.1)  # the poll's interval: the loop ends once orchestrator 1 logged each loss
    fenced = sql(database,
                 "SELECT e.job_id, e.type, e.epoch, e.client AS writer, c.client AS holder FROM audit_events e "
                 "LEFT JOIN audit_claims c ON c.job_id = e.job_id AND c.epoch = e.epoch "
                 "WHERE e.type = ANY($1::text[]) AND c.client IS DISTINCT FROM e.client", HOLDER_EVENTS)
    assert not fenced, f"fenced writes accepted: {[dict(row) for row in fenced]}"

    s3 = chaos.cluster.s3.client()
    bucket, prefix = chaos.files_url.removeprefix("s3://").split("/", 1)
    keys = [item["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=f"{prefix}/output/cluster/") for item in page.get("Contents", [])]
    for i in jobs.values():
        mine = [key for key in keys if key.rsplit("/", 1)[1].startswith(f"c{i}_")]
        assert len(mine) == 1, (i, mine)
        other = chaos.gateways[1 - i % 2]  # not the gateway that took the job
        viewed = other.http.get("/view", params={"filename": mine[0].rsplit("/", 1)[1], "subfolder": "cluster",
                                                 "type": "output"})
        assert viewed.status_code == 200, viewed.text
        assert viewed.content == s3.get_object(Bucket=bucket, Key=mine[0])["Body"].read()
    print(f"\n{len(jobs)} jobs; {len(orphans)} re-queued after the kill in "
          f"{max(requeued.values()) - killed_at:.2f} s; {len(taken_over)} taken from the cut-off orchestrator, "
          f"which noticed each; cpu: {rig.cpu_note}")
