"""Running the `cardpay` CLI as a user does, and reading what it said."""

from __future__ import annotations

import os
import re
import subprocess
import sys

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")


def run_cardpay(args: tuple[str, ...], env: dict[str, str],
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m cardpay.cli.main ARGS` with only the given CARDPAY_ settings (none inherited)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CARDPAY_")}
    return subprocess.run([sys.executable, "-m", "cardpay.cli.main", *args], capture_output=True,
                          text=True, timeout=timeout, env={**base, **env})


def message_lines(text: str) -> list[str]:
    """What the command says, without the log lines of the components it ran."""
    return [line for line in text.splitlines() if line.strip() and not LOG_LINE.match(line)]
