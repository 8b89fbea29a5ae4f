"""The long chaos run: N small jobs (default 200) while every service is kill -9'd and restarted in turn.

Run: `.venv/bin/python bench/chaos.py --jobs 200` from the repository root; prints the figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.chaos import run_chaos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=1200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="comfymesh-chaos-") as home:
        report = run_chaos(Path(home), jobs=args.jobs, seed=args.seed, timeout=args.timeout)
    once = sum(1 for count in report.completed_events.values() if count == 1)
    single_file = sum(1 for count in report.files_per_job.values() if count == 1)
    latencies = sorted(report.latencies)
    print(f"jobs: {report.jobs}, wall: {report.seconds:.1f} s, kills: {dict(report.kills)}")
    print(f"statuses: {dict(report.statuses)}; completed exactly once: {once}; one output file: {single_file}; "
          f"wrong outputs: {len(report.wrong_outputs)}")
    if latencies:
        print(f"job latency (submit to finished seen): p50 {statistics.median(latencies):.2f} s, "
              f"p95 {latencies[int(0.95 * (len(latencies) - 1))]:.2f} s, max {latencies[-1]:.2f} s")


if __name__ == "__main__":
    main()
