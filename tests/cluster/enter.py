"""Start a service inside a rig host: `python -m tests.cluster.enter <netns> <cgroup.procs|-> <module> [args…]`
joins the host's CPU cgroup (so every process it starts is under the quota), then execs
`ip netns exec <netns> python -m <module> args…` (same pid: the supervisor's kill and readiness still apply;
`ip netns exec` bind-mounts /etc/netns/<netns>/resolv.conf over /etc/resolv.conf)."""

from __future__ import annotations

import os
import sys


def main() -> None:
    netns, procs, module, *args = sys.argv[1:]
    if procs != "-":
        with open(procs, "w") as cgroup:
            cgroup.write(str(os.getpid()))
    os.execvp("ip", ["ip", "netns", "exec", netns, sys.executable, "-m", module, *args])


if __name__ == "__main__":
    main()
