"""One diffusion replica per device (issue 19): `comfymesh up` with COMFYMESH_DIFFUSION_DEVICES, two SD1.5
checkpoints, jobs for both submitted at once; throughput against one device, and where each model ended up.

Run (repository root, a 2-GPU machine): `python bench/devices_gpu.py --devices cuda:0,cuda:1 --out devices.json`
CPU smoke test: `python bench/devices_gpu.py --tiny --devices cpu,cpu --size 64 --steps 2 --jobs 4`

For each device set (the one given, then its first device alone): start `comfymesh up`, warm each model with
one job, then submit --jobs jobs alternating the two models all at once and time them to the last one;
report jobs/s, the p50 latency, and each replica's Describe (resident models, free memory). Expected with
two cards: each model stays on one card (no reload) and about twice the one-card throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
MODELS = {"bench_a.safetensors": 0, "bench_b.safetensors": 1}  # file -> weight seed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def workflow(ckpt: str, size: int, steps: int, seed: int) -> dict[str, Any]:
    return {
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": 8.0, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                                   "positive": ["6", 0], "negative": ["7", 0],
                                                   "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a glass bottle", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "devices", "images": ["8", 0]}},
    }


def run_job(http: httpx.Client, prompt: dict[str, Any]) -> float:
    start = time.perf_counter()
    reply = http.post("/v1/workflows", json={"prompt": prompt})
    assert reply.status_code == 202, reply.text
    job_id = reply.json()["job_id"]
    while (job := http.get(f"/v1/jobs/{job_id}").json())["status"] not in ("completed", "failed", "cancelled"):
        time.sleep(0.02)
    assert job["status"] == "completed", job.get("error")
    return time.perf_counter() - start


def describe(addresses: list[str], secret: str) -> list[dict[str, Any]]:
    from comfymesh.rpc import open_channel
    from comfymesh.v1 import stage_pb2, stage_pb2_grpc

    async def ask() -> list[dict[str, Any]]:
        answers = []
        for address in addresses:
            async with open_channel(address, secret) as channel:
                info = await stage_pb2_grpc.StageStub(channel).Describe(stage_pb2.DescribeRequest(), timeout=10)
            answers.append({"address": address, "device": info.device, "resident": list(info.resident_models),
                            "free_gib": round(info.free_memory_bytes / 2**30, 2)})
        return answers

    return asyncio.run(ask())


def measure(home: Path, devices: str, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    label = devices.replace(",", "_").replace(":", "")
    env = {**os.environ, "COMFYMESH_HOME": str(home), "COMFYMESH_PORT": str(port),
           "COMFYMESH_ORCHESTRATOR": f"127.0.0.1:{free_port()}", "COMFYMESH_IMAGING_REPLICAS": f"127.0.0.1:{free_port()}",
           "COMFYMESH_DIFFUSION_REPLICAS": ",".join(f"127.0.0.1:{free_port()}" for _ in devices.split(",")),
           "COMFYMESH_DIFFUSION_DEVICES": devices,
           # a job store (and node cache) per device set: the second set must compute its jobs again
           "COMFYMESH_DATABASE": str(home / f"jobs-{label}.db"), "COMFYMESH_RATE_LIMIT_PER_MIN": "0",
           # set here, not drawn by `up`: this script asks the replicas' Describe too
           "COMFYMESH_INTERNAL_SECRET": secrets.token_urlsafe(32)}
    log = open(home / f"up-{label}.log", "w")  # noqa: SIM115
    up = subprocess.Popen([sys.executable, "-m", "comfymesh.cli.main", "up"], env=env, stdout=log,
                          stderr=subprocess.STDOUT, start_new_session=True)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600)
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                if http.get("/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert up.poll() is None and time.monotonic() < deadline, (home / log.name).read_text()[-3000:]
            time.sleep(0.5)
        warm = {ckpt: round(run_job(http, workflow(ckpt, args.size, args.steps, 0)), 3) for ckpt in MODELS}
        prompts = [workflow(list(MODELS)[i % 2], args.size, args.steps, 1000 + i) for i in range(args.jobs)]
        start = time.perf_counter()
        with ThreadPoolExecutor(len(prompts)) as pool:
            latencies = list(pool.map(lambda p: run_job(http, p), prompts))
        wall = time.perf_counter() - start
        return {"devices": devices, "warm_first_job_s": warm, "jobs": args.jobs, "wall_s": round(wall, 3),
                "jobs_per_s": round(args.jobs / wall, 3), "p50_s": round(statistics.median(latencies), 3),
                "replicas": describe(env["COMFYMESH_DIFFUSION_REPLICAS"].split(","),
                                     env["COMFYMESH_INTERNAL_SECRET"])}
    finally:
        http.close()
        up.send_signal(2)  # Ctrl+C: `up` stops its services
        up.wait(60)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", default="cuda:0,cuda:1")
    parser.add_argument("--tiny", action="store_true", help="tiny checkpoints instead of full-size SD1.5")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from comfymesh.diffusion.models.tiny_checkpoint import make_tiny_checkpoint

    home = Path(tempfile.mkdtemp(prefix="devices-bench-"))
    for name, seed in MODELS.items():
        make_tiny_checkpoint(home / "models" / "checkpoints" / name, "sd15", seed=seed, full=not args.tiny,
                             device="cuda" if args.devices.startswith("cuda") else "cpu")
    results = [measure(home, args.devices, args), measure(home, args.devices.split(",")[0], args)]
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
