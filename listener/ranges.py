"""Adaptive `eth_getLogs` block ranges: grow while responses are small, shrink on provider limits.

Providers refuse large queries in many dialects ("query returned more than 10000 results",
"Log response size exceeded", "block range is too wide", "exceed maximum block range", timeouts).
When the error suggests a range ("try with this block range [0x..., 0x...]"), that range is used.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from listener.errors import RpcError

_TOO_LARGE = re.compile(
    r"more than \d+ results|response size|too (?:wide|large|many)|range (?:is )?too|"
    r"exceed(?:s|ed)? (?:the )?(?:max|limit)|limit exceeded|limited to|block range|timeout|"
    r"timed out",
    re.IGNORECASE,
)
_SUGGESTED = re.compile(r"\[\s*(0x[0-9a-fA-F]+)\s*,\s*(0x[0-9a-fA-F]+)\s*\]")


_NOT_RANGE = re.compile(r"block height is|rate limit|too many requests", re.IGNORECASE)


def is_range_too_large(error: RpcError) -> bool:
    """A refusal that a smaller range would avoid (not a rate limit, not a node behind)."""
    return bool(_TOO_LARGE.search(error.message)) and not _NOT_RANGE.search(error.message)


def suggested_range(error: RpcError) -> tuple[int, int] | None:
    match = _SUGGESTED.search(error.message)
    if match is None:
        return None
    lo, hi = int(match.group(1), 16), int(match.group(2), 16)
    return (lo, hi) if hi >= lo else None


@dataclass
class RangePlanner:
    size: int = 500
    minimum: int = 1
    maximum: int = 10_000
    target_logs: int = 5_000
    """Grow while a range returns fewer logs than this; shrink when it returns more than twice."""
    max_logs: int = 10_000
    """The most logs one range may apply: a response with more is cut (`cut`) and the next
    ranges are sized so that they hold about `target_logs`."""

    def plan(self, first: int, safe: int) -> int:
        """The last block of the next range starting at `first` (never beyond `safe`)."""
        return min(safe, first + self.size - 1)

    def succeeded(self, blocks: int, logs: int) -> None:
        if logs > 2 * self.target_logs:
            self.size = max(self.minimum, self.size // 2)
        elif logs < self.target_logs and blocks >= self.size:
            grown = self.size * 2
            if logs:
                # Not past what the density seen predicts to stay under `max_logs` (with 10 %
                # headroom): an over-full response is cut and its tail fetched again.
                grown = min(grown, max(self.size, blocks * self.max_logs * 9 // (10 * logs)))
            self.size = min(self.maximum, grown)

    def over_full(self, blocks: int, logs: int) -> None:
        """A response held more than `max_logs`: size the next ranges to the density it showed
        (about `target_logs` each) instead of halving step by step through more over-full ones."""
        fitting = blocks * self.target_logs // max(1, logs)
        self.size = max(self.minimum, min(self.size // 2, fitting))

    def cut(self, first: int, last: int, block_numbers: Sequence[int]) -> int:
        """The last block to apply out of a response for `first..last` whose logs are in
        `block_numbers`: all of it when it holds at most `max_logs` logs, else the longest prefix
        of whole blocks that does (at least the block `first`: one block cannot be split)."""
        if len(block_numbers) <= self.max_logs or first == last:
            return last
        counts = Counter(block_numbers)
        end, taken = first, counts.get(first, 0)
        for number in range(first + 1, last + 1):
            taken += counts.get(number, 0)
            if taken > self.max_logs:
                break
            end = number
        return end

    def refused(self, first: int, error: RpcError | None) -> None:
        """The provider refused the range starting at `first`: take its hint or halve."""
        hint = suggested_range(error) if error is not None else None
        if hint is not None and hint[0] == first:
            self.size = max(self.minimum, min(self.size - 1, hint[1] - hint[0] + 1))
        else:
            self.size = max(self.minimum, self.size // 2)

    @property
    def at_minimum(self) -> bool:
        return self.size <= self.minimum
