"""Retries: which failures are retried, and after how long (exponential backoff with jitter).

The jitter is not drawn from a random generator but derived from the saga id, the request and the
attempt (a hash): the decision stays pure and repeatable (a replay schedules the same retry), and
sagas that failed together still spread out their retries instead of hitting a recovering node in
step (AWS Architecture Blog, "Exponential Backoff And Jitter": "equal jitter", half the backoff
fixed and half spread, so no retry fires at once after a failure).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum


class FailureClass(StrEnum):
    """Why a side effect failed, as its adapter classifies it."""

    TEMPORARY = "temporary"
    """The effect may succeed if tried again (a node down, a timeout, a nonce race)."""
    SOFT = "soft"
    """Refused for a reason that can pass (insufficient funds, an allowance spent for today)."""
    HARD = "hard"
    """Refused for good (a reverted transaction, a closed card): retrying cannot help."""
    FRAUD = "fraud"
    """Refused as fraud: never retried, and a person looks at it."""


RETRIED = frozenset({FailureClass.TEMPORARY, FailureClass.SOFT})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """At most `max_attempts` tries of one step; the n-th retry waits between half and all of
    `min(cap, base * 2**(n-1))`."""

    max_attempts: int = 8
    base: timedelta = timedelta(seconds=1)
    cap: timedelta = timedelta(minutes=10)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.base <= timedelta(0) or self.cap < self.base:
            raise ValueError("a retry policy needs 0 < base <= cap")

    def retries(self, failure: FailureClass, attempt: int) -> bool:
        """Whether a step that failed with `failure` on try `attempt` (1-based) is tried again."""
        return failure in RETRIED and attempt < self.max_attempts

    def delay(self, attempt: int, key: str) -> timedelta:
        """How long to wait before try `attempt + 1`; `key` names the request (its jitter)."""
        ceiling = min(self.cap, self.base * (1 << min(max(attempt - 1, 0), 40)))
        return ceiling * jitter(f"{key}:{attempt}")


def jitter(key: str) -> float:
    """A fraction in [0.5, 1) derived from `key`: spread, never zero (a retry that fires at
    once would hammer what just failed)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return 0.5 + int.from_bytes(digest, "big") / 2**65
