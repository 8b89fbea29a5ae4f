"""`comfymesh up`'s diffusion replicas: one per device of COMFYMESH_DIFFUSION_DEVICES (default every visible
CUDA device, else one `cpu`), each on its own port with its device pinned. Imports neither torch nor grpc:
the supervisor's children are started by fork+exec."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class DiffusionReplica:
    name: str  # the supervisor's label: "diffusion", or "diffusion-0", "diffusion-1", ... for several
    listen: str
    device: str  # as configured: "cpu" or "cuda:N" (N counts the devices this process sees)
    env: dict[str, str]  # what pins the device in the child

    def describe(self) -> str:
        pinned = f", CUDA_VISIBLE_DEVICES={self.env['CUDA_VISIBLE_DEVICES']}" if "CUDA_VISIBLE_DEVICES" in self.env else ""
        return f"{self.name} listens on {self.listen}, device {self.device}{pinned}"


def visible_cuda_devices() -> int:
    """How many CUDA devices this machine shows (nvidia-smi; 0 without one): counted without importing torch,
    which would make `up` slow to start and initialise CUDA in the supervisor."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return 0
    try:
        listed = subprocess.run([tool, "--list-gpus"], capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listed.stdout.splitlines() if line.startswith("GPU "))


def device_set(configured: str, cuda_count: int, parent_env: Mapping[str, str]) -> list[str]:
    """The devices to start a replica on: the configured list, else `cuda:0..` for each visible one, else cpu."""
    devices = [d.strip() for d in configured.split(",") if d.strip()]
    if devices:
        return ["cuda:0" if d == "cuda" else d for d in devices]
    visible = parent_env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:  # the user narrowed the set: nvidia-smi still lists every card
        cuda_count = min(cuda_count, len([v for v in visible.split(",") if v.strip()]))
    return [f"cuda:{i}" for i in range(cuda_count)] or ["cpu"]


def _card_id(device: str, visible: list[str], setting: str) -> str:
    """The CUDA_VISIBLE_DEVICES id of `cuda:N` (N counts the cards this process sees)."""
    index = int(device.split(":", 1)[1])
    if visible and index >= len(visible):
        raise ValueError(f"{setting}: {device} is not among CUDA_VISIBLE_DEVICES={','.join(visible)}")
    return visible[index] if visible else str(index)


def plan_replicas(devices: list[str], addresses: list[str], parent_env: Mapping[str, str],
                  split_devices: str = "") -> list[DiffusionReplica]:
    """One replica per device: the configured addresses in order, then the first one's port counted up. With
    `split_devices` (COMFYMESH_DIFFUSION_SPLIT_DEVICES), the replica on its first device also sees the others, to
    split a model too big for its card across them (memory.split_plan); the other replicas split nothing."""
    host, _, port = addresses[0].rpartition(":")
    visible = [v.strip() for v in parent_env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    split = ["cuda:0" if d.strip() == "cuda" else d.strip() for d in split_devices.split(",") if d.strip()]
    if split and split[0] not in devices:
        raise ValueError(f"COMFYMESH_DIFFUSION_SPLIT_DEVICES starts with {split[0]}, which runs no diffusion replica "
                         f"({', '.join(devices)}): list a replica's device first")
    replicas = []
    for i, device in enumerate(devices):
        listen = addresses[i] if i < len(addresses) else f"{host}:{int(port) + i}"
        splits = bool(split) and device == split[0] and devices.index(device) == i
        if device.startswith("cuda:"):
            cards = split if splits else [device]
            # the child sees its card as its cuda:0, then the split's others in order (ids from the user's own
            # CUDA_VISIBLE_DEVICES kept)
            env = {"CUDA_VISIBLE_DEVICES": ",".join(_card_id(d, visible, "COMFYMESH_DIFFUSION_DEVICES" if d == device
                                                             else "COMFYMESH_DIFFUSION_SPLIT_DEVICES")
                                                    for d in cards),
                   "COMFYMESH_DEVICE": "cuda:0"}
            if splits:
                env["COMFYMESH_DIFFUSION_SPLIT_DEVICES"] = ",".join(f"cuda:{n}" for n in range(len(cards)))
        else:
            env = {"COMFYMESH_DEVICE": device}
            if splits:
                env["COMFYMESH_DIFFUSION_SPLIT_DEVICES"] = ",".join(split)
        if split and not splits:
            env["COMFYMESH_DIFFUSION_SPLIT_DEVICES"] = ""
        name = "diffusion" if len(devices) == 1 else f"diffusion-{i}"
        replicas.append(DiffusionReplica(name, listen, device, env))
    return replicas
