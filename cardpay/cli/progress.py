"""A terminal progress bar for long work (backfill, replay): done/total, rate and ETA, on stderr."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, label: str, *, unit: str = "items", enabled: bool = True,
                 out: TextIO | None = None, min_interval: float = 0.2) -> None:
        self.label = label
        self.unit = unit
        self.enabled = enabled
        self._out = out or sys.stderr
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._min_interval = min_interval
        self.extra = ""

    def update(self, done: int, total: int, extra: str = "") -> None:
        if extra:
            self.extra = extra
        now = time.monotonic()
        if not self.enabled or (now - self._last_draw < self._min_interval and done < total):
            return
        self._last_draw = now
        self._out.write("\r" + self.render(done, total, now - self._start))
        self._out.flush()

    def render(self, done: int, total: int, elapsed: float) -> str:
        width = 30
        fraction = done / total if total else 1.0
        filled = int(width * fraction)
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else 0.0
        bar = "#" * filled + "-" * (width - filled)
        extra = f" {self.extra}" if self.extra else ""
        return (f"{self.label} [{bar}] {done}/{total} {self.unit} {fraction:6.1%} "
                f"{rate:,.0f} {self.unit}/s ETA {eta:5.0f}s{extra}")

    def close(self) -> None:
        if self.enabled:
            self._out.write("\n")
            self._out.flush()
