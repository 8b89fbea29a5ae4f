"""Issue 18, acceptance 4: imaging throughput with 1, then 3 stage hosts (target: 3 hosts >= 2.55x one host).

The cluster rig (tests/cluster/rig.py, needs root): every host a network namespace on a bridge; PostgreSQL and
SeaweedFS on the bridge address. Two control hosts each run an orchestrator (PostgreSQL job store, leases) and
a gateway; outputs go to S3 (COMFYMESH_FILES_URL=s3://...). Stage hosts run one imaging stage each under a
cgroup CPU quota (default 0.4 CPU) and are found through DNS (dns:///imaging.cluster.test). Every stage host
starts before the first phase; a phase puts its hosts in DNS, waits until both orchestrators see each of them
serving, runs warm-up jobs, then a client submits the measured jobs (EmptyImage 512x512 -> ImageBlur radius
12 -> SaveImage, a new color each: no cache hit) through one gateway and polls each job at most --poll-hz times
a second until it finishes. Throughput: jobs / (last job's `finished` - first submit).

Run (root, from the repository root): `.venv/bin/python bench/scale_out.py --out scale_out.json`
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.cluster.rig import Host, Rig, started_rig, unavailable  # noqa: E402
from tests.cluster.roles import ORCHESTRATOR_PORT, STAGE_PORT, Gateway, calls, start_control, start_stage  # noqa: E402
from tests.cluster.servers import missing_servers, servers_on  # noqa: E402
from tests.integration.test_dns_discovery import blur  # noqa: E402
from tests.postgres import PostgresServer  # noqa: E402
from tests.seaweedfs import SeaweedServer  # noqa: E402

TERMINAL = ("completed", "failed", "cancelled")
ORCHESTRATORS = 2


@dataclass
class Phase:
    hosts: int
    jobs: int
    seconds: float  # first submit -> the last job's `finished` (the orchestrator's clock, the same machine)
    jobs_per_s: float
    seen_seconds: float  # first submit -> the poll that saw the last job finished
    latency_p50_s: float
    calls_per_host: dict[str, int] = field(default_factory=dict)  # measured jobs' RunStage calls, by stage host
    polls: int = 0
    # where the CPU went while the measured jobs ran (CPU seconds), and how often each stage hit its quota
    stage_cpu_s: dict[str, float] = field(default_factory=dict)
    stage_throttled: dict[str, float] = field(default_factory=dict)  # share of quota periods throttled
    stage_quota_used: float = 0.0  # the stage hosts' CPU over what their quotas allowed (1.0: quota-bound)
    control_cpu_s: float = 0.0  # orchestrators and gateways
    servers_cpu_s: dict[str, float] = field(default_factory=dict)  # PostgreSQL, SeaweedFS (process trees)
    client_cpu_s: float = 0.0  # this process: submits and polls
    machine_busy_cpus: float = 0.0  # every process on the machine (other work included), in CPUs


class Usage:
    """CPU counters read before and after a phase: each service's process (with its reaped children), each
    stage host's cgroup throttling (cpu.stat), the servers' process trees, this client and the whole machine
    (/proc/stat)."""

    def __init__(self, rig: Rig, stages: list[Host], servers: dict[str, int]) -> None:
        self.rig, self.stages, self.servers = rig, stages, servers
        self.start = self._read()

    @staticmethod
    def _trees(roots: dict[str, int]) -> dict[str, float]:
        """CPU ticks of each root process and its live descendants (those reaped count in their parent's)."""
        parents: dict[int, int] = {}
        ticks: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    parents[int(entry.name)] = int(fields[1])
                    ticks[int(entry.name)] = sum(int(v) for v in fields[11:15])
        totals: dict[str, float] = {}
        for name, root in roots.items():
            tree, frontier = {root}, [root]
            while frontier:
                children = [pid for pid, parent in parents.items() if parent in frontier and pid not in tree]
                tree.update(children)
                frontier = children
            totals[name] = float(sum(ticks.get(pid, 0) for pid in tree))
        return totals

    def _read(self) -> dict[str, float]:
        tick = os.sysconf("SC_CLK_TCK")
        counters: dict[str, float] = {}
        for service in self.rig.supervisor.services:
            if service.process is not None and service.process.poll() is None:
                with contextlib.suppress(OSError):
                    fields = Path(f"/proc/{service.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
                    counters[f"cpu:{service.spec.name}"] = sum(int(v) for v in fields[11:15]) / tick
        for host in self.stages:
            if host.cgroup is not None:
                stat = dict(line.split() for line in (host.cgroup / "cpu.stat").read_text().splitlines()
                            if len(line.split()) == 2)
                counters[f"periods:{host.name}"] = float(stat.get("nr_periods", 0))
                counters[f"throttled:{host.name}"] = float(stat.get("nr_throttled", 0))
        for name, value in self._trees(self.servers).items():
            counters[f"server:{name}"] = value / tick
        times = os.times()
        counters["client"] = times.user + times.system
        cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        counters["machine_busy"] = (sum(int(v) for v in cpu) - int(cpu[3]) - int(cpu[4])) / tick  # minus idle, iowait
        return counters

    def finish(self, result: Phase, seconds: float, cpus: float) -> None:
        end = self._read()
        delta = {key: end[key] - self.start.get(key, 0.0) for key in end}
        result.stage_cpu_s = {host.name: round(delta.get(f"cpu:imaging-{host.name}", 0.0), 2) for host in self.stages}
        result.stage_throttled = {host.name: round(delta.get(f"throttled:{host.name}", 0.0) /
                                                   max(1.0, delta.get(f"periods:{host.name}", 0.0)), 3)
                                  for host in self.stages if f"periods:{host.name}" in delta}
        allowed = cpus * len(self.stages) * seconds
        result.stage_quota_used = round(sum(result.stage_cpu_s.values()) / allowed, 3)
        result.control_cpu_s = round(sum(v for k, v in delta.items() if k.startswith(("cpu:orchestrator",
                                                                                     "cpu:gateway"))), 2)
        result.servers_cpu_s = {name: round(delta[f"server:{name}"], 2) for name in self.servers}
        result.client_cpu_s = round(delta["client"], 2)
        result.machine_busy_cpus = round(delta["machine_busy"] / seconds, 2)


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@contextlib.contextmanager
def cluster(root: Path) -> Iterator[tuple[Rig, PostgresServer, SeaweedServer]]:
    """The rig with PostgreSQL and SeaweedFS on its bridge (as tests/cluster/conftest.py's fixture), torn down
    after, also on failure."""
    reason = unavailable()
    if reason:
        raise SystemExit(f"scale_out: no cluster rig on this machine: {reason}")
    if reason := missing_servers():
        raise SystemExit(f"scale_out: {reason}")
    rig = started_rig(root)
    with servers_on(rig) as (postgres, s3):
        yield rig, postgres, s3


def wait_logged(rig: Rig, since: int, message: str, hosts: list[Host], timeout: float = 60) -> None:
    """Until every orchestrator logged `message` (with "serving": true, for a health message) for each host's
    replica after log line `since` (the stage name re-resolves every 5 s)."""
    wanted = {(f"orchestrator{i}", f"{host.ip}:{STAGE_PORT}") for i in range(ORCHESTRATORS) for host in hosts}
    deadline = time.monotonic() + timeout
    while True:
        seen = set()
        for line in rig.logs[since:]:
            service, _, text = line.partition(": ")
            if message not in text:
                continue
            with contextlib.suppress(ValueError):
                record = json.loads(text)
                if record.get("serving", True) is True:
                    seen.add((service, str(record.get("replica"))))
        if wanted <= seen:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"scale_out: never logged {message!r}: {sorted(wanted - seen)}")
        time.sleep(0.1)  # the poll's interval: the loop ends once both orchestrators logged every host


def prompt(color: int, size: int, radius: int, prefix: str) -> dict[str, Any]:
    """EmptyImage size² -> ImageBlur(radius) -> SaveImage (the DNS discovery test's graph, this radius)."""
    graph = blur(color, size=size, blurs=1)
    graph["blur0"]["inputs"]["blur_radius"] = radius
    graph["save"]["inputs"]["filename_prefix"] = prefix
    return graph


def run_jobs(gateway: Gateway, prompts: list[dict[str, Any]], poll_hz: float, timeout: float) -> tuple[
        float, dict[str, dict[str, Any]], float, int]:
    """Submit every prompt, then poll each unfinished job at most `poll_hz` times a second until all are done.
    Returns (first submit's time.time(), job id -> final job, the time the last one was seen finished, polls)."""
    first = time.time()
    pending = [gateway.submit(p) for p in prompts]
    finished: dict[str, dict[str, Any]] = {}
    seen_last, polls = first, 0
    deadline = time.monotonic() + timeout
    while pending:
        round_start = time.monotonic()
        for job_id in list(pending):
            job = gateway.job(job_id)
            polls += 1
            if job["status"] in TERMINAL:
                if job["status"] != "completed":
                    raise SystemExit(f"scale_out: job {job_id} ended {job['status']}: {job.get('error')}")
                finished[job_id], seen_last = job, time.time()
                pending.remove(job_id)
        if time.monotonic() > deadline:
            raise SystemExit(f"scale_out: {len(pending)} jobs unfinished after {timeout:.0f} s")
        # the client's poll rate cap: each pending job is asked at most poll_hz times a second
        time.sleep(max(0.0, 1 / poll_hz - (time.monotonic() - round_start)))
    return first, finished, seen_last, polls


def phase(rig: Rig, gateway: Gateway, stages: list[Host], previous: list[Host], servers: dict[str, int],
          args: argparse.Namespace, colors: Iterator[int]) -> Phase:
    """Put `stages` in DNS (instead of `previous`), wait until both orchestrators follow, warm up, measure."""
    n = len(stages)
    since = len(rig.logs) if previous else 0  # the first phase: the hosts' lines since start-up count
    rig.dns_set("imaging", [host.ip for host in stages])
    wait_logged(rig, since, "stage replica left DNS", [host for host in previous if host not in stages])
    wait_logged(rig, since, "stage replica health", [host for host in stages if host not in previous])
    say(f"{n} stage host(s) serving on both orchestrators; {args.warmup} warm-up jobs")
    run_jobs(gateway, [prompt(next(colors), args.size, args.radius, f"warm{n}/w")
                       for _ in range(args.warmup)], args.poll_hz, args.timeout)
    before = {host.name: calls(rig, f"imaging-{host.name}") for host in stages}
    say(f"submitting {args.jobs} jobs to {n} stage host(s)")
    usage = Usage(rig, stages, servers)
    first, finished, seen_last, polls = run_jobs(
        gateway, [prompt(next(colors), args.size, args.radius, f"scale{n}/j") for _ in range(args.jobs)],
        args.poll_hz, args.timeout)
    last = max(float(job["finished"]) for job in finished.values())
    latencies = sorted(float(job["finished"]) - float(job["created"]) for job in finished.values())
    result = Phase(hosts=n, jobs=len(finished), seconds=round(last - first, 3),
                   jobs_per_s=round(len(finished) / (last - first), 4), seen_seconds=round(seen_last - first, 3),
                   latency_p50_s=round(latencies[len(latencies) // 2], 3),
                   calls_per_host={host.name: calls(rig, f"imaging-{host.name}") - before[host.name]
                                   for host in stages}, polls=polls)
    usage.finish(result, time.time() - first, args.stage_cpus)
    say(f"{n} host(s): {result.jobs} jobs in {result.seconds:.2f} s = {result.jobs_per_s:.3f} jobs/s "
        f"(p50 latency {result.latency_p50_s:.2f} s; calls per host {result.calls_per_host})")
    say(f"  CPU s per stage host {result.stage_cpu_s} ({result.stage_quota_used:.0%} of their quota), quota "
        f"periods throttled {result.stage_throttled}; "
        f"orchestrators+gateways {result.control_cpu_s} CPU s, {result.servers_cpu_s}, client "
        f"{result.client_cpu_s}; machine busy {result.machine_busy_cpus} of "
        f"{os.cpu_count()} CPUs (other work included)")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=24, help="measured jobs per phase (default 24)")
    parser.add_argument("--warmup", type=int, default=4, help="unmeasured jobs before each phase (default 4)")
    parser.add_argument("--hosts", default="1,3", help="stage hosts per phase, ascending (default 1,3)")
    parser.add_argument("--rounds", type=int, default=1, help="run the phases this many times, alternating; "
                        "the ratio is the rounds' median (default 1)")
    parser.add_argument("--stage-cpus", type=float, default=0.4, help="each stage host's CPU quota (default 0.4)")
    parser.add_argument("--size", type=int, default=512, help="EmptyImage width and height (default 512)")
    parser.add_argument("--radius", type=int, default=12, help="ImageBlur radius (default 12)")
    parser.add_argument("--poll-hz", type=float, default=4.0, help="most polls per job per second (default 4)")
    parser.add_argument("--timeout", type=float, default=600, help="longest one phase's jobs may take (s)")
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    args = parser.parse_args()
    counts = [int(n) for n in args.hosts.split(",")]
    if not counts or counts != sorted(counts) or counts[0] < 1:
        parser.error("--hosts: ascending host counts, e.g. 1,3")
    if args.rounds < 1:
        parser.error("--rounds: at least 1")
    if not 0 < args.poll_hz <= 4:
        parser.error("--poll-hz: more than 0 and at most 4 (the acceptance's client)")

    colors = iter(range(0x600000, 0x700000, 7))
    phases: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="comfymesh-scale-") as tmp, cluster(Path(tmp)) as (rig, postgres, s3):
        say(f"rig up on {rig.bridge_ip}; cpu: {rig.cpu_note or f'cgroup v{rig.cgroup_version} quotas'}")
        database, files_url = postgres.new_database(), s3.new_url()
        env = {"COMFYMESH_FILES_URL": files_url, "COMFYMESH_FILES_STORAGE_OPTIONS": json.dumps(s3.options()),
               "COMFYMESH_ARTIFACTS_URL": (rig.root / "artifacts").as_uri(), "COMFYMESH_DATABASE": database,
               "COMFYMESH_IMAGING_REPLICAS": f"dns:///imaging.cluster.test:{STAGE_PORT}",
               "COMFYMESH_DIFFUSION_REPLICAS": ""}
        stages = [rig.add_host(f"stage{i}", cpus=args.stage_cpus) for i in range(counts[-1])]
        control = [rig.add_host(f"ctl{i}") for i in range(ORCHESTRATORS)]  # no quota: the stages are measured
        rig.dns_set("imaging", [stages[0].ip])
        orchestrators = rig.dns_set("orchestrator", [host.ip for host in control])
        for host in stages:
            start_stage(rig, host, f"imaging-{host.name}", env)
        for i, host in enumerate(control):
            start_control(rig, host, str(i), env, orchestrators=f"dns:///{orchestrators}:{ORCHESTRATOR_PORT}")
        gateway = Gateway(rig, control[0])
        try:
            gateway.wait_ready()
            say(f"{len(stages)} stage hosts at {args.stage_cpus} CPU and {ORCHESTRATORS} orchestrators up")
            previous: list[Host] = []
            assert s3.process is not None
            servers = {"postgresql": int((postgres.data / "postmaster.pid").read_text().split()[0]),
                       "seaweedfs": s3.process.pid}
            for _ in range(args.rounds):
                for n in counts:
                    phases.append(phase(rig, gateway, stages[:n], previous, servers, args, colors))
                    previous = stages[:n]
        finally:
            gateway.close()
    # each round's ratio: its last phase over its first (rounds alternate, so slow drifts of the machine's
    # other load show up as a spread between rounds instead of skewing one ratio)
    ratios = [phases[i + len(counts) - 1].jobs_per_s / phases[i].jobs_per_s for i in range(0, len(phases), len(counts))]
    ratio = statistics.median(ratios)
    linear = counts[-1] / counts[0]
    summary = {"stage_cpus": args.stage_cpus, "size": args.size, "radius": args.radius, "poll_hz": args.poll_hz,
               "orchestrators": ORCHESTRATORS, "phases": [asdict(p) for p in phases],
               "ratios": [round(r, 3) for r in ratios], "ratio": round(ratio, 3), "of_linear": round(ratio / linear, 3),
               "target_of_linear": 0.85, "meets_target": ratio / linear >= 0.85, "cpu_note": rig.cpu_note}
    say(f"{counts[0]} -> {counts[-1]} hosts: {ratio:.2f}x the throughput ({ratio / linear:.2f} of linear; "
        f"target >= 0.85){f'; median of rounds {[round(r, 2) for r in ratios]}' if len(ratios) > 1 else ''}")
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
        say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
