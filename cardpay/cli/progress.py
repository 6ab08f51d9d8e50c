"""A progress bar for long work (backfill, replay) on stderr: done/total, percent, rate, ETA and a
free-text extra (e.g. logs/s), drawn by rich.

On by default only when stderr is a terminal, or when CARDPAY_PROGRESS is set (to anything but
"" or "0"); in a pipe rich draws the final state once, on `close()`.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress


def progress_wanted(out: TextIO | None = None) -> bool:
    """Whether to draw a bar: a terminal, or CARDPAY_PROGRESS set."""
    forced = os.environ.get("CARDPAY_PROGRESS", "")
    if forced not in ("", "0"):
        return True
    return (out or sys.stderr).isatty()


class Progress:
    """`update(done, total, extra=...)` as often as convenient, then `close()`."""

    def __init__(self, label: str, *, unit: str = "items", enabled: bool | None = None,
                 out: TextIO | None = None, min_interval: float = 0.2) -> None:
        self.label = label
        self.unit = unit
        self.enabled = progress_wanted(out) if enabled is None else enabled
        self.extra = ""
        self._bar: RichProgress | None = None
        self._task: TaskID | None = None
        if self.enabled:
            console = Console(file=out or sys.stderr, highlight=False)
            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(unit),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[extra]}"),
                console=console,
                refresh_per_second=max(1.0, 1.0 / min_interval),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(label, total=None, rate="", extra="")

    def update(self, done: int, total: int, extra: str = "") -> None:
        if extra:
            self.extra = extra
        if self._bar is None or self._task is None:
            return
        task = self._bar.tasks[0]
        speed = task.speed
        rate = f"{speed:,.0f} {self.unit}/s" if speed else ""
        self._bar.update(self._task, completed=done, total=max(total, done, 1), rate=rate,
                         extra=self.extra)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
