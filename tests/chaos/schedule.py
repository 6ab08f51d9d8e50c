"""The chaos run's fault schedule, drawn from a seed: the same seed gives the same faults at the
same offsets (TigerBeetle's rule: a failure found once is replayed by its seed).

A schedule spreads its faults over `duration` seconds. Every kind is drawn at least once (a
short run still touches every fault), in an order and at offsets chosen by the seed; longer runs
draw more faults of random kinds. Pure: no I/O, so its determinism is a unit test.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

PROCESSES = ("api", "sagas", "listen", "project", "relay")
"""The supervised `cardpay` commands a kill may hit."""
RPC_FAULTS = ("429", "timeout", "truncated", "lagging")
"""What the faulty proxy in front of the node does for a while (see tests/support/faulty_proxy)."""
KINDS: tuple[str, ...] = (
    *(f"kill:{p}" for p in PROCESSES),
    "kafka_restart",
    "postgres_restart",
    *(f"rpc:{f}" for f in RPC_FAULTS),
    "reorg",
)
MAX_REORG_DEPTH = 30


@dataclass(frozen=True)
class Fault:
    at: float
    """Seconds after the workload starts."""
    kind: str
    depth: int = 0
    """reorg: how many blocks are replaced."""
    seconds: float = 0.0
    """rpc:*: how long the proxy misbehaves; restarts: how long the server stays down."""

    def describe(self) -> str:
        extra = (f" depth {self.depth}" if self.kind == "reorg" else
                 f" for {self.seconds:.1f}s" if self.seconds else "")
        return f"t+{self.at:.1f}s {self.kind}{extra}"


def schedule(seed: int, duration: float, *, kinds: tuple[str, ...] = KINDS,
             spacing: float = 6.0, start: float = 3.0) -> list[Fault]:
    """Faults at least `spacing` seconds apart on average, from `start` to 90% of `duration`
    (the rest is left for the stack to settle while the workload still runs); every kind in
    `kinds` at least once."""
    if duration <= start:
        raise ValueError(f"a chaos run needs more than {start:.0f}s")
    if not kinds:  # a calm run: the baseline a chaos run of the same seed is compared with
        return []
    rng = random.Random(seed)
    end = duration * 0.9
    count = max(len(kinds), int((end - start) / spacing))
    drawn = list(kinds)
    rng.shuffle(drawn)
    drawn += [rng.choice(kinds) for _ in range(count - len(kinds))]
    slot = (end - start) / count
    out = []
    for i, kind in enumerate(drawn):
        at = round(start + slot * i + rng.uniform(0, slot * 0.5), 2)
        depth = rng.randint(1, MAX_REORG_DEPTH) if kind == "reorg" else 0
        seconds = (round(rng.uniform(2.0, min(8.0, slot)), 2) if kind.startswith("rpc:") else
                   round(rng.uniform(0.5, 3.0), 2) if kind.endswith("_restart") else 0.0)
        out.append(Fault(at, kind, depth, seconds))
    return out
