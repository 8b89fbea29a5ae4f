"""Latency of the imaging graph through the whole mesh vs the same stage functions called in-process.

Run: `.venv/bin/python bench/mesh_overhead.py --iterations 40` (from the repository root).
Every iteration loads a differently named copy of the photo, so nothing is served from the cache.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from comfymesh.imaging.nodes import nodes  # noqa: E402
from comfymesh.outputs import save_image  # noqa: E402
from comfymesh.stage.node import NodeContext  # noqa: E402
from tests.mesh import SHARED, Mesh  # noqa: E402


def workflow(image: str) -> dict:
    prompt = json.loads((SHARED / "workflows" / "imaging_pipeline.json").read_text())
    prompt["1"]["inputs"]["image"] = image
    return prompt


def run_in_process(home: Path, prompt: dict) -> None:
    """The same node functions, called in order in this process (the floor for the mesh)."""
    values: dict[tuple[str, int], object] = {}
    for node_id in ("1", "2", "3", "4", "5", "6"):
        node = prompt[node_id]
        inputs = {name: values[(str(v[0]), v[1])] if isinstance(v, list) else v for name, v in node["inputs"].items()}
        ctx = NodeContext(job_id="bench", node_id=node_id, class_type=node["class_type"], home=home,
                          prompt=prompt, attempt_key=f"{time.time_ns()}")
        ctx.job_id = f"bench-{time.time_ns()}"
        impl = save_image if node["class_type"] == "SaveImage" else nodes.impls[node["class_type"]]
        for slot, value in enumerate(impl(ctx, **inputs)):
            values[(node_id, slot)] = value


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(0.95 * (len(ordered) - 1))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="comfymesh-bench-"))
    mesh = Mesh(home, stages=("imaging",))
    total = args.iterations + args.warmup
    for i in range(2 * total):
        shutil.copy(SHARED / "data" / "astronaut.png", home / "input" / f"bench_{i}.png")
    mesh.start()
    try:
        inproc, through_mesh = [], []
        for i in range(total):
            prompt = workflow(f"bench_{i}.png")
            start = time.perf_counter()
            run_in_process(home, prompt)
            if i >= args.warmup:
                inproc.append(time.perf_counter() - start)
        for i in range(total):
            prompt = workflow(f"bench_{total + i}.png")
            start = time.perf_counter()
            job_id = mesh.submit(prompt)
            events = mesh.events(f"/v1/jobs/{job_id}/events")
            elapsed = time.perf_counter() - start
            assert events[-1]["event"] == "completed", events[-1]
            if i >= args.warmup:
                through_mesh.append(elapsed)
    finally:
        mesh.stop()
        shutil.rmtree(home, ignore_errors=True)
    p50_in, p95_in = percentiles(inproc)
    p50_mesh, p95_mesh = percentiles(through_mesh)
    print(f"imaging_pipeline.json (512x512 photo -> 256x256), {args.iterations} runs each after {args.warmup} warm-up")
    print("| path | p50 ms | p95 ms |\n|---|---|---|")
    print(f"| in-process stage functions | {p50_in:.1f} | {p95_in:.1f} |")
    print(f"| through the mesh (POST -> SSE completed) | {p50_mesh:.1f} | {p95_mesh:.1f} |")
    print(f"| mesh overhead | {p50_mesh - p50_in:.1f} | {p95_mesh - p95_in:.1f} |")


if __name__ == "__main__":
    main()
