"""Progress and previews of a sampling loop from CUDA events, without a per-step host sync.

The loop never waits on the device except to keep at most `max_ahead` steps queued (so cancellation
stays prompt).
"""

from __future__ import annotations

import collections
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class _Pending:
    step: int
    total: int
    event: Any
    rgb: torch.Tensor | None


class StepReporter:
    """Progress/preview callback for a sampling loop that never forces a sync per step on CUDA.

    On a CUDA device each step records an event (and starts a non-blocking copy of the small preview
    into pinned memory); steps are reported once their event has completed. At most `max_ahead` steps
    may be queued ahead of the GPU, then the loop waits for the oldest one. On a CPU everything is
    reported immediately.
    """

    def __init__(self, report_progress: Callable[[int, int], None],
                 report_preview: Callable[[bytes, str], None] | None, rgb: Callable[[torch.Tensor], torch.Tensor],
                 device: torch.device, max_ahead: int = 2) -> None:
        self.report_progress = report_progress
        self.report_preview = report_preview
        self.rgb = rgb
        self.device = device
        self.max_ahead = max_ahead
        self.pending: collections.deque[_Pending] = collections.deque()

    def __call__(self, i: int, total: int, denoised: torch.Tensor) -> None:
        if self.device.type != "cuda":
            self._emit(i, total, self.rgb(denoised) if self.report_preview else None)
            return
        rgb = None
        if self.report_preview is not None:
            small = self.rgb(denoised)
            rgb = torch.empty(small.shape, dtype=small.dtype, pin_memory=True)
            rgb.copy_(small, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending.append(_Pending(i, total, event, rgb))
        self.drain(block=False)

    def drain(self, block: bool) -> None:
        while self.pending:
            head = self.pending[0]
            if not (block or len(self.pending) > self.max_ahead or head.event.query()):
                return
            head.event.synchronize()
            self.pending.popleft()
            self._emit(head.step, head.total, head.rgb)

    def finish(self) -> None:
        self.drain(block=True)

    def _emit(self, i: int, total: int, rgb: torch.Tensor | None) -> None:
        self.report_progress(i + 1, total)
        if self.report_preview is not None and rgb is not None:
            from PIL import Image

            buf = io.BytesIO()
            Image.fromarray(rgb.cpu().numpy(), "RGB").save(buf, format="JPEG", quality=95)
            self.report_preview(buf.getvalue(), "JPEG")
