"""`BoundedFeed`: never past its bound, holds back what lies beyond in order, lets it through
when the bound rises, and knows when a bound is reached across gaps in the offsets."""

from __future__ import annotations

import asyncio

import pytest

from projector.feed import BoundedFeed
from tests.fakes.projection import FakeFeed
from tests.unit.test_projector import messages, spent

pytestmark = pytest.mark.unit


def offsets(batch: list[object]) -> list[int]:
    return [m.offset for m in batch]  # type: ignore[attr-defined]


def test_it_stops_at_the_bound_and_goes_on_when_it_rises() -> None:
    records = [*messages([spent(f"p{i}", 1) for i in range(6)], source="a"),
               *messages([spent(f"q{i}", 1) for i in range(3)], source="b")]
    feed = BoundedFeed(FakeFeed(records), {"a": 4})

    async def go() -> None:
        await feed.start({})
        assert offsets(await feed.poll(100, 0)) == [0, 1, 2, 3]  # "b" is not in the bound
        assert await feed.poll(100, 0) == []
        assert feed.positions()["a"] == 4 and feed.reached({"a": 4})
        assert not feed.reached({"a": 5})
        feed.raise_bound({"a": 6, "b": 2})
        batch = await feed.poll(100, 0)
        assert [(m.source, m.offset) for m in batch] == [("a", 4), ("a", 5), ("b", 0), ("b", 1)]
        assert feed.reached({"a": 6, "b": 2}) and feed.positions()["b"] == 2
        feed.raise_bound({"a": 1})  # a bound never goes back
        assert await feed.poll(100, 0) == []

    asyncio.run(go())


def test_a_gap_at_the_bound_counts_as_reached() -> None:
    """Offsets 0, 1, then 5 (2..4 rolled back): a bound of 3 is reached once 5 is held back."""
    records = messages([spent("p0", 1), spent("p1", 1)], source="events")
    records += messages([spent("p5", 1)], source="events", start=5)
    feed = BoundedFeed(FakeFeed(records), {"events": 3})

    async def go() -> None:
        await feed.start({})
        assert offsets(await feed.poll(100, 0)) == [0, 1]
        assert feed.reached({"events": 3})
        assert feed.positions() == {"events": 2}

    asyncio.run(go())
