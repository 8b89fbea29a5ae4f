"""50 small jobs while a script kill -9s the imaging stage, the diffusion stage, the orchestrator and the
gateway at random moments and restarts them: every job completes exactly once, with the right output."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos import run_chaos


@pytest.mark.timeout(600)
def test_no_job_is_lost_or_done_twice_under_chaos(tmp_path: Path) -> None:
    report = run_chaos(tmp_path, jobs=50, seed=1, timeout=300)
    assert set(report.kills) == {"imaging0", "diffusion", "orchestrator", "gateway"}, report.kills
    assert report.statuses == {"completed": 50}, report
    assert set(report.completed_events.values()) == {1} and len(report.completed_events) == 50
    assert set(report.files_per_job.values()) == {1}, report.files_per_job
    assert report.wrong_outputs == []
