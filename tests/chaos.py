"""Chaos run: many small jobs while services are kill -9'd and restarted at random moments.

Shared by the bounded test (tests/integration/test_chaos.py) and the longer benchmark (bench/chaos.py).
"""

from __future__ import annotations

import io
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from tests.mesh import SHARED, Mesh

SERVICES = ("imaging0", "diffusion", "orchestrator", "gateway")


@dataclass
class ChaosReport:
    jobs: int
    kills: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    completed_events: dict[str, int] = field(default_factory=dict)
    files_per_job: dict[str, int] = field(default_factory=dict)
    wrong_outputs: list[str] = field(default_factory=list)
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)


def _imaging_job(i: int) -> dict[str, Any]:
    return {"1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": f"chaos_i{i}"}}}


def _diffusion_job(i: int) -> dict[str, Any]:
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
            "2": {"class_type": "CLIPTextEncode", "inputs": {"text": f"a fox number {i}", "clip": ["1", 1]}},
            "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
            "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
            "5": {"class_type": "KSampler", "inputs": {"seed": i, "steps": 2, "cfg": 7.0, "sampler_name": "euler",
                                                       "scheduler": "normal", "denoise": 1.0, "model": ["1", 0],
                                                       "positive": ["2", 0], "negative": ["3", 0],
                                                       "latent_image": ["4", 0]}},
            "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
            "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": f"chaos_d{i}"}}}


def _retrying(call: Any, deadline: float) -> httpx.Response:
    """Clients retry through gateway restarts; that is the contract (submits carry their own id)."""
    while True:
        try:
            reply = call()
            if reply.status_code < 500:
                return reply
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("the gateway never answered")
        time.sleep(0.2)


def _chaos(mesh: Mesh, stop: threading.Event, report: ChaosReport, rng: random.Random) -> None:
    """Kill every service in turn (shuffled rounds, so each one dies), at random moments."""
    order: list[str] = []
    while not stop.wait(rng.uniform(0.5, 1.5)):
        if not order:
            order = rng.sample(SERVICES, len(SERVICES))
        name = order[0]
        service = mesh.service(name)
        if service.process is None or service.process.poll() is not None or not service.ready.is_set():
            continue  # still restarting: try this one again at the next moment
        order.pop(0)
        mesh.kill(name)
        report.kills[name] += 1
        stop.wait(rng.uniform(0.1, 1.0))
        mesh.supervisor._start(service)
        service.ready.wait(60)  # one failure at a time: the next kill comes after this one is back


def run_chaos(home: Path, jobs: int, seed: int = 0, timeout: float = 600) -> ChaosReport:
    rng = random.Random(seed)
    mesh = Mesh(home, stages=("imaging", "diffusion"), env={"COMFYMESH_MAX_ATTEMPTS": "20"})
    subprocess.run([sys.executable, "-m", "comfymesh.diffusion.models.tiny_checkpoint", "--family", "sd15",
                    str(home / "models" / "checkpoints" / "sd15.safetensors")], check=True, capture_output=True)
    shutil.copy(SHARED / "data" / "coffee.png", home / "input" / "example.png")
    expected = 1.0 - np.asarray(Image.open(SHARED / "data" / "coffee.png").convert("RGB"), np.float64) / 255
    report = ChaosReport(jobs=jobs)
    mesh.start()
    http = httpx.Client(base_url=mesh.url, timeout=10)
    stop = threading.Event()
    chaos = threading.Thread(target=_chaos, args=(mesh, stop, report, rng), daemon=True)
    started = time.monotonic()
    deadline = started + timeout
    submitted: dict[str, float] = {}
    indexes: dict[str, int] = {}  # job id -> its place in the run
    try:
        chaos.start()
        for i in range(jobs):
            prompt = _diffusion_job(i) if i % 5 == 4 else _imaging_job(i)
            # a submit retried after a gateway death must not make a second job: the key makes it the same one
            key = f"chaos-{seed}-{i}"
            reply = _retrying(lambda p=prompt, k=key: http.post("/v1/workflows", json={"prompt": p},
                                                                headers={"Idempotency-Key": k}), deadline)
            assert reply.status_code == 202, reply.text
            job_id = reply.json()["job_id"]
            indexes[job_id] = i
            submitted[job_id] = time.monotonic()
            time.sleep(rng.uniform(0.1, 0.5))
        pending = set(submitted)
        # keep going until every job is finished and every service has died at least once
        while (pending or set(report.kills) != set(SERVICES)) and time.monotonic() < deadline:
            for job_id in sorted(pending):
                status = _retrying(lambda j=job_id: http.get(f"/v1/jobs/{j}"), deadline).json().get("status")
                if status in ("completed", "failed", "cancelled"):
                    pending.discard(job_id)
                    report.latencies.append(time.monotonic() - submitted[job_id])
            time.sleep(0.2)
        stop.set()
        chaos.join()
        for name in SERVICES:  # everything back up for the final reads
            service = mesh.service(name)
            if service.process is None or service.process.poll() is not None:
                mesh.supervisor._start(service)
        mesh.wait_ready()
        report.seconds = time.monotonic() - started
        for job_id in submitted:
            job = _retrying(lambda j=job_id: http.get(f"/v1/jobs/{j}"), time.monotonic() + 60).json()
            report.statuses[job["status"]] += 1
            index = indexes[job_id]
            prefix = f"chaos_d{index}_" if index % 5 == 4 else f"chaos_i{index}_"
            files = [p for p in (home / "output").glob(f"{prefix}*.png")]
            report.files_per_job[job_id] = len(files)
            if job["status"] == "completed" and len(files) == 1:
                pixels = np.asarray(Image.open(io.BytesIO(files[0].read_bytes())).convert("RGB"), np.float64) / 255
                right = pixels.shape == (32, 32, 3) if index % 5 == 4 else \
                    pixels.shape == expected.shape and np.abs(pixels - expected).max() <= 1 / 255 + 1e-9
                if not right:
                    report.wrong_outputs.append(job_id)
        with sqlite3.connect(home / "comfymesh.db") as db:
            report.completed_events = dict(db.execute(
                "SELECT job_id, COUNT(*) FROM events WHERE type = 'completed' GROUP BY job_id").fetchall())
    finally:
        stop.set()
        http.close()
        mesh.stop()
    return report
