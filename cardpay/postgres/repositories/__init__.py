"""PostgreSQL repositories, one per concern, each on the unit of work's open connection.

They implement the Protocols in `cardpay.handlers.ports` (and the projector's); statements built
from a block range are chunked under PostgreSQL's bind-parameter limit (`chunks`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")

MAX_BIND_PARAMETERS = 65_535


def chunks(items: Sequence[T], *, params_per_item: int = 1) -> Iterator[Sequence[T]]:
    """Slices of `items` small enough for one statement (PostgreSQL takes at most 65,535 bind
    parameters per statement; a dense block range can hold far more spends than that)."""
    size = max(1, (MAX_BIND_PARAMETERS - 100) // params_per_item)
    for start in range(0, len(items), size):
        yield items[start:start + size]
