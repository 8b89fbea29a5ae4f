"""Hop marks: one JSON line on stderr per mark when tracing is on, nothing when it is off."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from comfymesh import trace
from comfymesh.config import Settings


def test_marks_are_json_lines_with_wall_clock_times(configure: Callable[..., Settings],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    configure(trace="1")
    before = time.time()
    trace.mark("stage.node.KSampler")
    trace.mark("gateway.view")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["trace"] for line in lines] == ["stage.node.KSampler", "gateway.view"]
    assert before <= lines[0]["t"] <= lines[1]["t"] <= time.time()


def test_off_by_default_writes_nothing(monkeypatch: pytest.MonkeyPatch, configure: Callable[..., Settings],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("COMFYMESH_TRACE", raising=False)
    configure()
    trace.mark("gateway.view")
    assert capsys.readouterr().err == ""
