"""``Clock``: where a validation's wall time goes (``val/seconds/<part>``)."""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import torch


class Clock:
    """Wall seconds by part of a validation, each part's own (a part entered inside another pauses
    it), the device's queued work included: what ``val/seconds/<part>`` reports."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.seconds, self._open = device, defaultdict(float), []

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @contextmanager
    def part(self, name: str):
        start = self.now()
        if self._open:  # pause the enclosing part
            self.seconds[self._open[-1][0]] += start - self._open[-1][1]
        self._open.append([name, start])
        try:
            yield
        finally:
            end = self.now()
            self.seconds[name] += end - self._open.pop()[1]
            if self._open:
                self._open[-1][1] = end
