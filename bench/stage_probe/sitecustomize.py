"""GPU memory probe for the bench's diffusion stage (bench/families_gpu.py puts this folder on the stage's
PYTHONPATH; Python imports `sitecustomize` at start-up). With COMFYMESH_BENCH_MEM_FILE set, a daemon thread
writes torch.cuda.max_memory_allocated / memory_allocated of the process to that file as JSON every 0.2 s,
once the process has initialised CUDA; a `<file>.reset` file beside it resets the peak first. The stage's own
code is untouched: this measures what the stage allocated, not what the bench did."""

from __future__ import annotations

import json
import os
import sys
import threading
import time


def _probe(path: str) -> None:
    while True:
        time.sleep(0.2)
        torch = sys.modules.get("torch")
        try:  # torch may still be half-imported: its cuda attribute appears late
            if torch is None or not torch.cuda.is_initialized():
                continue
            if os.path.exists(path + ".reset"):
                torch.cuda.reset_peak_memory_stats()
                os.unlink(path + ".reset")
            state = {"max_allocated": torch.cuda.max_memory_allocated(), "allocated": torch.cuda.memory_allocated(),
                     "max_reserved": torch.cuda.max_memory_reserved(), "t": time.time()}
            with open(path + ".tmp", "w") as f:
                json.dump(state, f)
            os.replace(path + ".tmp", path)
        except Exception:  # never disturb the stage
            continue


if os.environ.get("COMFYMESH_BENCH_MEM_FILE"):
    threading.Thread(target=_probe, args=(os.environ["COMFYMESH_BENCH_MEM_FILE"],), daemon=True,
                     name="bench-mem-probe").start()
