"""comfymesh's roles on rig hosts (tests/cluster/rig.py): imaging stages, and control hosts (an orchestrator and
a gateway), every host on the same fixed ports (each namespace has its own), plus a small gateway client."""

from __future__ import annotations

import time
from typing import Any

import httpx

from comfymesh.cli.supervisor import Supervised
from tests.cluster.rig import Host, Rig

ORCHESTRATOR_PORT = 7100
STAGE_PORT = 7200
GATEWAY_PORT = 8188


def start_stage(rig: Rig, host: Host, name: str, env: dict[str, str], wait: bool = True) -> Supervised:
    """An imaging stage on `host` at host.ip:STAGE_PORT."""
    return rig.spawn(host, name, ["comfymesh.imaging", "--listen", f"{host.ip}:{STAGE_PORT}"], env, wait=wait)


def start_control(rig: Rig, host: Host, suffix: str, env: dict[str, str],
                  orchestrators: str = "") -> tuple[Supervised, Supervised]:
    """An orchestrator (`orchestrator<suffix>`) and a gateway (`gateway<suffix>`) on `host`; the gateway calls
    `orchestrators` (default: this host's; a `dns:///` name spreads its calls over every one)."""
    listen = f"{host.ip}:{ORCHESTRATOR_PORT}"
    orchestrator = rig.spawn(host, f"orchestrator{suffix}", ["comfymesh.orchestrator", "--listen", listen],
                             {**env, "COMFYMESH_ORCHESTRATOR": listen})
    gateway = rig.spawn(host, f"gateway{suffix}", ["comfymesh.gateway", "--host", host.ip, "--port", str(GATEWAY_PORT)],
                        {**env, "COMFYMESH_ORCHESTRATOR": orchestrators or listen})
    return orchestrator, gateway


def calls(rig: Rig, service: str, job_id: str = "") -> int:
    """RunStage calls a stage process logged (for one job, if given)."""
    return sum(1 for line in list(rig.logs)
               if line.startswith(f"{service}: ") and '"RunStage"' in line and job_id in line)


class Gateway:
    """A client of one host's gateway."""

    def __init__(self, rig: Rig, host: Host) -> None:
        self.http = httpx.Client(base_url=f"http://{host.ip}:{GATEWAY_PORT}", timeout=30,
                                 headers={"Authorization": f"Bearer {rig.api_token}"})

    def close(self) -> None:
        self.http.close()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.http.get("/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.http.base_url} never became ready")
            time.sleep(0.1)  # the poll's interval: the loop ends on the gateway's answer

    def submit(self, prompt: dict[str, Any], key: str = "") -> str:
        headers = {"Idempotency-Key": key} if key else {}
        reply = self.http.post("/v1/workflows", json={"prompt": prompt}, headers=headers)
        assert reply.status_code == 202, reply.text
        return str(reply.json()["job_id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.http.get(f"/v1/jobs/{job_id}").json())

    def wait(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["status"] in ("completed", "failed", "cancelled"):
                return job
            time.sleep(0.05)  # the poll's interval: the loop ends on the job's final status
        raise TimeoutError(f"job {job_id} did not finish")
