"""Many hosts on one machine, for the cluster tests and benchmarks (issue 18's test rig; run as root).

A host is a network namespace on a Linux bridge (198.18.K.0/24, K the first free, normally 0; the bridge side
is .1, hosts .10 up), with its own data dir and CPU quota (a cgroup: v2 `cpu.max`, else v1 `cpu.cfs_quota_us`,
else none and `Rig.cpu_note` says why). dnsmasq on the bridge address answers `<name>.cluster.test` from an
addn-hosts file (SIGHUP after each edit: a pod came or went) and nothing else; each host's resolv.conf points
at it (`ip netns exec` bind-mounts /etc/netns/<netns>/resolv.conf). Faults: `kill` (-9 every process of a
host) and `drop`/`heal` (nft rules in the host's namespace). Traffic stays on the bridge and loopback.

    rig = Rig(tmp_path).start()            # bridge + dnsmasq; servers for the hosts listen on rig.bridge_ip
    host = rig.add_host("stage0", cpus=0.5)
    rig.spawn(host, "imaging0", ["comfymesh.imaging", "--listen", f"{host.ip}:7200"], {"COMFYMESH_…": "…"})
    rig.dns_set("imaging", [host.ip])       # imaging.cluster.test, answered once this returns
    rig.kill(host); rig.start_service(rig.service("imaging0"))   # kill -9 all it runs, then one is back
    rig.drop(host, rig.bridge_ip, 5432); rig.heal(host)
    rig.stop()                              # everything torn down, also after a failure
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from comfymesh.cli.supervisor import ServiceSpec, Supervised, Supervisor
from tests.mesh import REPO

DOMAIN = "cluster.test"
FAULT_TABLE = "comfymesh_fault"
_PERIOD_US = 100_000


@dataclass
class Host:
    name: str
    netns: str
    ip: str
    home: Path  # its own data dir (COMFYMESH_HOME of what it runs)
    cgroup: Path | None  # the cgroup its processes join (None: no CPU quota)
    veth: str
    services: list[Supervised] = field(default_factory=list)


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def unavailable() -> str:
    """Why a rig cannot run here ('' when it can): not root, a missing tool, or a kernel that refuses netns."""
    if os.geteuid() != 0:
        return "the cluster rig needs root (network namespaces, a bridge, cgroups)"
    missing = [tool for tool in ("ip", "dnsmasq", "nft") if shutil.which(tool) is None and
               not Path(f"/usr/sbin/{tool}").exists()]
    if missing:
        return f"missing {', '.join(missing)}: `make system-deps` installs iproute2, dnsmasq-base and nftables"
    probe = f"cmprobe{os.getpid() % 100000}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        return f"the kernel refused a network namespace: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return ""


def _free_subnet() -> str:
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    for k in range(256):
        if f" 198.18.{k}." not in used:
            return f"198.18.{k}"
    raise RuntimeError("every 198.18.K.0/24 is in use")


def _dns_query(server: str, name: str, timeout: float = 1.0) -> list[str] | None:
    """The A records `server` gives `name` (None: no answer in time). A bare RFC 1035 query over UDP."""
    query = struct.pack(">HHHHHH", 0x4D43, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    query += struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(query, (server, 53))
            reply = sock.recv(4096)
        except OSError:
            return None
    answers = struct.unpack(">H", reply[6:8])[0]
    at = len(query)  # the reply repeats the question
    found: list[str] = []
    for _ in range(answers):
        while reply[at] and reply[at] < 0xC0:  # a name: labels, maybe ending in a pointer
            at += reply[at] + 1
        at += 2 if reply[at] >= 0xC0 else 1
        kind, _cls, _ttl, length = struct.unpack(">HHIH", reply[at:at + 10])
        at += 10
        if kind == 1 and length == 4:
            found.append(socket.inet_ntoa(reply[at:at + 4]))
        at += length
    return sorted(found)


class Rig:
    """The bridge, dnsmasq, hosts and their processes. Log lines land in `logs` as '<service>: <line>'."""

    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.tag = f"{os.getpid() % 100000:05d}"
        self.bridge = f"cmb{self.tag}"
        self.subnet = ""
        self.bridge_ip = ""
        self.hosts: dict[str, Host] = {}
        self._added = 0
        self.names: dict[str, list[str]] = {}  # short name -> addresses in the addn-hosts file
        self.addn_hosts = root / "addn-hosts"
        self.dnsmasq: subprocess.Popen[bytes] | None = None
        self.cgroup_root: Path | None = None
        self.cgroup_version = 0
        self.cpu_note = ""
        self.logs: list[str] = []
        # hosts listen off loopback: services refuse to unless they share an internal secret, gateways without a token
        self.api_token = secrets.token_urlsafe(32)
        base = {**os.environ, "COMFYMESH_INTERNAL_SECRET": secrets.token_urlsafe(32),
                "COMFYMESH_API_TOKEN": self.api_token, "COMFYMESH_LOG_JSON": "true", "COMFYMESH_RATE_LIMIT_PER_MIN": "0",
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])),
                **(env or {})}
        self.supervisor = Supervisor([], base, lambda name, line: self.logs.append(f"{name}: {line}"))

    # the network ----------------------------------------------------------------------------------
    def start(self) -> Rig:
        self.root.mkdir(parents=True, exist_ok=True)
        self.subnet = _free_subnet()
        self.bridge_ip = f"{self.subnet}.1"
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.bridge_ip}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        self.addn_hosts.write_text("")
        log = open(self.root / "dnsmasq.log", "wb")  # noqa: SIM115 - dnsmasq writes it until stop()
        # --local: names under DOMAIN are ours alone; --no-resolv with no server: nothing is forwarded anywhere
        self.dnsmasq = subprocess.Popen(
            ["dnsmasq", "--keep-in-foreground", "--log-facility=-", "--conf-file=/dev/null", "--no-hosts",
             "--no-resolv", f"--addn-hosts={self.addn_hosts}", f"--listen-address={self.bridge_ip}",
             "--bind-interfaces", "--port=53", "--user=root", "--group=root", f"--local=/{DOMAIN}/",
             "--local-ttl=0", f"--pid-file={self.root / 'dnsmasq.pid'}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while _dns_query(self.bridge_ip, f"ready.{DOMAIN}", timeout=0.2) is None:
            if self.dnsmasq.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dnsmasq did not answer: {(self.root / 'dnsmasq.log').read_text()[-1000:]}")
        self._cgroups()
        return self

    def _cgroups(self) -> None:
        """Find a writable CPU controller: cgroup v2 (cpu.max), else v1 (cpu.cfs_quota_us); else none."""
        for mount in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
            controllers = mount / "cgroup.controllers"
            if controllers.exists() and "cpu" in controllers.read_text().split():
                try:
                    (mount / "cgroup.subtree_control").write_text("+cpu")
                    group = mount / f"comfymesh-rig-{self.tag}"
                    group.mkdir()
                    (group / "cgroup.subtree_control").write_text("+cpu")
                except OSError as exc:
                    self.cpu_note = f"cgroup v2 at {mount} is not writable ({exc}); "
                    continue
                self.cgroup_root, self.cgroup_version = group, 2
                return
        v1 = Path("/sys/fs/cgroup/cpu")
        if (v1 / "cpu.cfs_quota_us").exists():
            try:
                group = v1 / f"comfymesh-rig-{self.tag}"
                group.mkdir()
            except OSError as exc:
                self.cpu_note += f"cgroup v1 cpu is not writable ({exc}): hosts run without a CPU quota"
                return
            self.cgroup_root, self.cgroup_version = group, 1
            self.cpu_note += "no cgroup v2 cpu controller: CPU quotas use cgroup v1's cpu.cfs_quota_us"
            return
        self.cpu_note += "no writable cgroup CPU controller: hosts run without a CPU quota"

    def set_cpus(self, host: Host, cpus: float) -> None:
        """Change a host's CPU quota (in CPUs) while it runs: a lower quota is a slow host."""
        if host.cgroup is None:
            raise RuntimeError(f"host {host.name} has no cgroup: {self.cpu_note}")
        quota = max(1000, int(cpus * _PERIOD_US))
        if self.cgroup_version == 2:
            (host.cgroup / "cpu.max").write_text(f"{quota} {_PERIOD_US}")
        else:
            (host.cgroup / "cpu.cfs_period_us").write_text(str(_PERIOD_US))
            (host.cgroup / "cpu.cfs_quota_us").write_text(str(quota))

    # hosts ----------------------------------------------------------------------------------------
    def add_host(self, name: str, cpus: float | None = None) -> Host:
        """A new namespace on the bridge at the next address; `cpus`: its CPU quota (None: unlimited)."""
        index = self._added  # never reused: a stale ARP entry for a removed host's address would misroute
        self._added += 1
        netns, veth = f"cm{self.tag}-{name}", f"cm{self.tag}v{index}"
        host = Host(name, netns, f"{self.subnet}.{10 + index}", self.root / "hosts" / name, None, veth)
        self.hosts[name] = host
        host.home.mkdir(parents=True, exist_ok=True)
        _ip("netns", "add", netns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _ip("link", "set", veth, "master", self.bridge, "up")
        _ip("-n", netns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        etc = Path("/etc/netns") / netns
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(f"nameserver {self.bridge_ip}\noptions timeout:1 attempts:2\n")
        if cpus is not None and self.cgroup_root is not None:
            host.cgroup = self.cgroup_root / name
            host.cgroup.mkdir()
            self.set_cpus(host, cpus)
        return host

    def spawn(self, host: Host, name: str, args: list[str], env: dict[str, str] | None = None,
              wait: bool = True, timeout: float = 120) -> Supervised:
        """Run `python -m args…` as service `name` on `host` (its COMFYMESH_HOME is the host's data dir);
        `wait`: until it logs ' listening on '."""
        procs = str(host.cgroup / "cgroup.procs") if host.cgroup is not None else "-"
        spec = ServiceSpec(name, ["tests.cluster.enter", host.netns, procs, *args],
                           {"COMFYMESH_HOME": str(host.home), **(env or {})})
        service = Supervised(spec)
        self.supervisor.services.append(service)
        host.services.append(service)
        self.start_service(service, wait, timeout)
        return service

    def start_service(self, service: Supervised, wait: bool = True, timeout: float = 120) -> None:
        """(Re)start a service that was spawned before (after `kill`, say)."""
        self.supervisor._start(service)
        deadline = time.monotonic() + timeout
        while wait and not service.ready.wait(0.1):
            if service.process is not None and service.process.poll() is None and time.monotonic() < deadline:
                continue
            lines = [line for line in self.logs if line.startswith(f"{service.spec.name}: ")]
            raise RuntimeError(f"{service.spec.name} did not start in {timeout:.0f} s:\n" + "\n".join(lines[-30:]))

    def service(self, name: str) -> Supervised:
        return next(s for s in self.supervisor.services if s.spec.name == name)

    # DNS ------------------------------------------------------------------------------------------
    def dns_set(self, name: str, addresses: list[str]) -> str:
        """Give `<name>.cluster.test` exactly these A records (SIGHUP: dnsmasq reads the file again); returns
        the full name, once dnsmasq answers with them."""
        self.names[name] = list(addresses)
        self.addn_hosts.write_text("".join(f"{address} {n}.{DOMAIN}\n"
                                           for n, found in self.names.items() for address in found))
        assert self.dnsmasq is not None
        self.dnsmasq.send_signal(signal.SIGHUP)
        full = f"{name}.{DOMAIN}"
        deadline = time.monotonic() + 10
        while _dns_query(self.bridge_ip, full, timeout=0.5) != sorted(addresses):
            if time.monotonic() > deadline:
                raise RuntimeError(f"dnsmasq never answered {full} with {addresses}")
            time.sleep(0.02)  # the poll's interval: the loop ends on dnsmasq's answer
        return full

    def resolve(self, name: str) -> list[str]:
        """What dnsmasq answers for `<name>.cluster.test` now."""
        return _dns_query(self.bridge_ip, f"{name}.{DOMAIN}") or []

    # faults ---------------------------------------------------------------------------------------
    def kill(self, host: Host, names: tuple[str, ...] = ()) -> None:
        """kill -9 every process the host runs (each service's whole process group), or those of `names`."""
        for service in host.services:
            if names and service.spec.name not in names:
                continue
            if service.process is not None and service.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(service.process.pid, signal.SIGKILL)
                service.process.wait()

    def drop(self, host: Host, address: str, port: int) -> None:
        """The host's TCP traffic to address:port (and the replies) is dropped, silently, until `heal`."""
        rules = (f"add table inet {FAULT_TABLE}\n"
                 f"add chain inet {FAULT_TABLE} out {{ type filter hook output priority 0 ; }}\n"
                 f"add chain inet {FAULT_TABLE} in {{ type filter hook input priority 0 ; }}\n"
                 f"add rule inet {FAULT_TABLE} out ip daddr {address} tcp dport {port} drop\n"
                 f"add rule inet {FAULT_TABLE} in ip saddr {address} tcp sport {port} drop\n")
        done = subprocess.run(["ip", "netns", "exec", host.netns, "nft", "-f", "-"], input=rules,
                              capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"nft refused the drop rules: {done.stderr.strip()}")

    def heal(self, host: Host) -> None:
        """Remove every `drop` of the host."""
        subprocess.run(["ip", "netns", "exec", host.netns, "nft", "delete", "table", "inet", FAULT_TABLE],
                       capture_output=True, timeout=30)

    # teardown -------------------------------------------------------------------------------------
    def remove_host(self, host: Host) -> None:
        """Stop its processes and delete its namespace, veth, resolv.conf and cgroup."""
        self.kill(host)
        for service in host.services:
            with contextlib.suppress(ValueError):
                self.supervisor.services.remove(service)
        subprocess.run(["ip", "netns", "del", host.netns], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", host.veth], capture_output=True, timeout=30)
        shutil.rmtree(Path("/etc/netns") / host.netns, ignore_errors=True)
        if host.cgroup is not None:
            _rmdir(host.cgroup)
        self.hosts.pop(host.name, None)

    def stop(self) -> None:
        """Tear everything down; safe to call after a partial start. The services' logs stay in services.log."""
        try:
            (self.root / "services.log").write_text("\n".join(self.logs) + "\n")
            self.supervisor.stop(grace=5)
        finally:
            for host in list(self.hosts.values()):
                with contextlib.suppress(Exception):
                    self.remove_host(host)
            if self.dnsmasq is not None and self.dnsmasq.poll() is None:
                self.dnsmasq.terminate()
                self.dnsmasq.wait(10)
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=30)
            if self.cgroup_root is not None:
                _rmdir(self.cgroup_root)


def _rmdir(cgroup: Path) -> None:
    """Remove a cgroup; a process just killed may take a moment to leave it."""
    deadline = time.monotonic() + 5
    while True:
        try:
            cgroup.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)  # the poll's interval: the loop ends when the kernel empties the group


def rig_or_skip(root: Path) -> Rig:
    """A started rig, or the test skipped with the reason this machine cannot host one."""
    reason = unavailable()
    if reason.startswith("missing"):
        pytest.fail(reason)
    if reason:
        pytest.skip(reason)
    return started_rig(root)


def started_rig(root: Path) -> Rig:
    """A started rig (stopped again when its start fails)."""
    rig = Rig(root)
    try:
        return rig.start()
    except BaseException:
        rig.stop()
        raise
