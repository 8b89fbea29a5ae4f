"""Batching across jobs through a real mesh: KSampler calls of 4 jobs submitted at once share one sampling
loop in the diffusion stage, and each job's PNG matches the one it gets alone."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.mesh import SHARED, Mesh


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("batching-home")
    # the batch closes as soon as 4 calls are in, so a long window costs nothing here and is robust on a
    # slow machine; a job alone (the solo reruns) waits the whole window first
    mesh = Mesh(home, stages=("imaging", "diffusion"),
                env={"COMFYMESH_BATCH_WINDOW_MS": "1500", "COMFYMESH_BATCH_MAX": "4",
                     # all four gather, the first included (by default a call on an idle GPU starts at once)
                     "COMFYMESH_BATCH_IDLE_START": "0"})
    subprocess.run([sys.executable, "-m", "comfymesh.diffusion.models.tiny_checkpoint", "--family", "sd15", "--seed", "1",
                    str(home / "models" / "checkpoints" / "sd15.safetensors")], check=True, capture_output=True)
    try:
        yield mesh.start()
    finally:
        mesh.stop()


def txt2img(seed: int) -> dict[str, Any]:
    """The sample txt2img workflow at 64x64 and 3 steps. (Not smaller: at a 4x4 latent the random tiny
    UNet turns float32 rounding differences between batch sizes into visible ones.)"""
    prompt = json.loads((SHARED / "workflows" / "txt2img_sd15.json").read_text())
    prompt["5"]["inputs"].update(width=64, height=64)
    prompt["3"]["inputs"].update(steps=3, seed=seed)
    prompt["9"]["inputs"]["filename_prefix"] = f"batching_{seed}"
    return prompt


def finish(mesh: Mesh, job_id: str) -> np.ndarray:
    job = mesh.wait(job_id, timeout=120)
    assert job["status"] == "completed", job["error"]
    png = mesh.http.get(f"/v1/jobs/{job_id}/output").content
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def test_simultaneous_jobs_share_one_sampling_loop(mesh: Mesh) -> None:
    # load the model and cache the text encodes, so the 4 jobs reach their KSampler close together
    finish(mesh, mesh.submit(txt2img(100)))
    seeds = [1, 2, 3, 4]
    started = time.monotonic()
    job_ids = [mesh.submit(txt2img(seed)) for seed in seeds]
    batched = [finish(mesh, job_id) for job_id in job_ids]
    batched_s = time.monotonic() - started
    lines = [line for line in mesh.logs if line.startswith("diffusion:") and "batched 4 KSampler calls" in line]
    assert len(lines) == 1, "\n".join(line[:300] for line in mesh.logs if "batched" in line or "RunStage" in line)
    assert set(json.loads(lines[0].split(":", 1)[1])["jobs"]) == set(job_ids)
    for job_id in job_ids:  # each job still saw its own progress
        events = mesh.events(f"/v1/jobs/{job_id}/events")
        progress = [(e["data"]["value"], e["data"]["max"]) for e in events if e["event"] == "node_progress"]
        assert progress == [(1, 3), (2, 3), (3, 3)]

    # the same prompts again one at a time, recomputed from scratch: each KSampler runs alone
    mesh.forget_cache()
    alone = [finish(mesh, mesh.submit(txt2img(seed))) for seed in seeds]
    assert sum("batched" in line for line in mesh.logs if line.startswith("diffusion:")) == 1
    for seed, a, b in zip(seeds, batched, alone, strict=True):
        assert a.shape == b.shape == (64, 64, 3)
        assert psnr(a, b) >= 40.0, (seed, psnr(a, b), float(np.abs(a - b).max()))
    assert len({arr.tobytes() for arr in batched}) == 4  # different seeds, different images
    print(f"4 batched jobs in {batched_s:.2f} s; PSNR vs solo: "
          f"{[round(psnr(a, b), 1) for a, b in zip(batched, alone, strict=True)]}")
