"""Services freeze their start-up heap and collect less often (COMFYMESH_GC_THRESHOLDS)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from comfymesh import gctune
from comfymesh.config import Settings


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_settle_freezes_the_heap_and_sets_thresholds(restore_gc: None) -> None:
    survivor = [object() for _ in range(100)]
    gctune.settle((12345, 7, 3))
    assert gc.get_threshold() == (12345, 7, 3)
    assert gc.get_freeze_count() >= len(survivor)  # what start-up made is never scanned again
    assert gc.get_count()[0] < 100  # the young generation starts empty


def test_empty_setting_leaves_the_collector_be(restore_gc: None) -> None:
    before = gc.get_threshold()
    gctune.settle(gctune.parse_thresholds(""))
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_thresholds_setting_is_validated() -> None:
    assert gctune.parse_thresholds(Settings(gc_thresholds="5000,20,50").gc_thresholds) == (5000, 20, 50)
    assert gctune.parse_thresholds(Settings().gc_thresholds) == (700, 10, 10)  # Python's own
    with pytest.raises(ValidationError):
        Settings(gc_thresholds="many")
