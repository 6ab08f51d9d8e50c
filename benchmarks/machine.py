"""What a benchmark ran on (CPU model, cores, memory, OS, Python): one place for every benchmark."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any


def facts() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram_gib: float | None = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        ram_gib = round(int(Path("/proc/meminfo").read_text().split()[1]) / 1024**2, 1)
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": ram_gib,
            "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version()}


def describe() -> str:
    f = facts()
    return (f"machine: {f['cpu']}, {f['cores']} cores, {f['ram_gib']} GiB, "
            f"Python {f['python']} on {f['os']}")
