"""The schedule is a function of the seed, and a run of any length touches every fault kind."""

from __future__ import annotations

import pytest

from tests.chaos.schedule import KINDS, MAX_REORG_DEPTH, schedule

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("duration", [60.0, 150.0, 3600.0])
def test_the_same_seed_gives_the_same_schedule_covering_every_kind(duration: float) -> None:
    first = schedule(7, duration)
    assert first == schedule(7, duration)
    assert first != schedule(8, duration)
    assert {f.kind for f in first} == set(KINDS)
    times = [f.at for f in first]
    assert times == sorted(times) and times[0] > 0 and times[-1] < duration


def test_reorg_depths_and_fault_windows_stay_in_their_bounds() -> None:
    faults = [f for seed in range(50) for f in schedule(seed, 600.0)]
    depths = {f.depth for f in faults if f.kind == "reorg"}
    assert min(depths) >= 1 and max(depths) <= MAX_REORG_DEPTH and len(depths) > 10
    assert all(2.0 <= f.seconds <= 8.0 for f in faults if f.kind.startswith("rpc:"))
    assert all(f.depth == 0 for f in faults if f.kind != "reorg")


def test_a_run_too_short_for_any_fault_is_refused() -> None:
    with pytest.raises(ValueError, match="more than"):
        schedule(1, 2.0)
