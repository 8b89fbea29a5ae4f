"""The host-memory budget of a GPU stage: what the model cache keeps in host RAM (streamed blocks' pinned weights, text
encoders moved off the device) and what a streamed model's load takes on the host, checked before any weight is read,
so that a plan the host cannot hold is refused with a clear error instead of the OOM killer ending the stage halfway.
On a CPU stage host memory is the device: its one budget covers everything and this one is off."""

from __future__ import annotations

from pathlib import Path

from comfymesh.contracts.errors import ModelTooLargeError, ResourceExhaustedError
from comfymesh.diffusion.memory.fit import ESTIMATE_SLACK, gib

# the share of the machine's RAM the cache may use by default, less what is already in use when the stage starts
# (the stage's own code, other processes): the rest is headroom for activations, decoded images and the OS
HOST_SHARE = 0.8
FALLBACK_HOST_BYTES = 16 * 2**30  # without /proc/meminfo (not Linux)
SETTING = "COMFYMESH_HOST_MEMORY_BYTES"


def host_memory(meminfo: Path = Path("/proc/meminfo")) -> tuple[int, int]:
    """(total, available) bytes of system RAM, from /proc/meminfo; (0, 0) where there is none."""
    try:
        text = meminfo.read_text()
    except OSError:
        return 0, 0
    info = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if rest.split():
            info[key] = int(rest.split()[0]) * 1024
    return info.get("MemTotal", 0), info.get("MemAvailable", 0)


def default_host_budget(total: int, available: int) -> int:
    """HOST_SHARE of the RAM less what is in use now (never below 0); the fallback without a reading."""
    if total <= 0:
        return FALLBACK_HOST_BYTES
    return max(0, int(total * HOST_SHARE) - (total - available))


def check_host_fit(name: str, needed: int, pinned: int, budget: int, held: int, slack: float = ESTIMATE_SLACK) -> None:
    """Refuse a streamed model before it loads when the host cannot hold it: ModelTooLargeError (non-retryable) when
    `needed` (its peak on the host: built there, then its streamed blocks kept `pinned`) exceeds the host budget
    alone, ResourceExhaustedError (retryable) when `held` bytes of other entries and jobs leave too little."""
    what = f"{name} needs {gib(needed)} of host memory to load with its blocks streamed ({gib(pinned)} pinned after)"
    if needed > budget * (1 + slack):
        raise ModelTooLargeError(f"{what} but the host-memory budget is {gib(budget)}: it cannot run on this replica "
                                 f"(raise {SETTING} on a host with more RAM, or give it a larger GPU budget)")
    if needed + held > budget * (1 + slack):
        raise ResourceExhaustedError(f"{what} but other models hold {gib(held)} of the {gib(budget)} host-memory "
                                     f"budget ({SETTING}): try again when they finish")
