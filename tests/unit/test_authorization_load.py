"""The authorization load benchmark's arithmetic: the open-loop schedule, nearest-rank
percentiles, latency from the due time (so a stall is not hidden), and the search verdict."""

from __future__ import annotations

import itertools

import pytest

from benchmarks.authorization_load import (
    Outcome,
    Summary,
    held,
    highest_held,
    percentile,
    send_offsets,
    summarize,
)

pytestmark = pytest.mark.unit


def test_the_schedule_is_evenly_spaced_at_the_rate_and_fixed_in_advance() -> None:
    offsets = send_offsets(200, 2)
    assert len(offsets) == 400
    assert offsets[0] == 0
    assert offsets[1] == pytest.approx(0.005)
    assert offsets[-1] == pytest.approx(1.995)
    gaps = {round(b - a, 9) for a, b in itertools.pairwise(offsets)}
    assert gaps == {0.005}
    assert send_offsets(3, 1.5) == pytest.approx([0, 1 / 3, 2 / 3, 1.0, 4 / 3])


@pytest.mark.parametrize("rate, seconds", [(0, 1), (10, 0), (-1, 5)])
def test_a_schedule_needs_a_positive_rate_and_duration(rate: float, seconds: float) -> None:
    with pytest.raises(ValueError):
        send_offsets(rate, seconds)


def test_percentiles_are_nearest_rank_values_of_the_sample() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 100..1, unsorted on purpose
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile(values, 0) == 1
    assert percentile([7.0], 99) == 7
    # ten samples: the p99 is the largest, never an interpolation below the tail
    assert percentile([1.0] * 9 + [500.0], 99) == 500
    assert percentile([1.0] * 9 + [500.0], 90) == 1
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def _outcome(due: float, latency: float, status: str = "200", *, sent_late: float = 0.0,
             approved: bool | None = True) -> Outcome:
    return Outcome(due, due + sent_late, due + latency, status,
                   approved if status == "200" else None)


def test_latency_counts_from_the_due_time_so_a_stalled_sender_is_not_hidden() -> None:
    # the generator stalled: requests due at 1.0 .. 1.9 all went out at 2.0 and took 1 ms
    stalled = [_outcome(1 + i / 10, (2 - (1 + i / 10)) + 0.001, sent_late=2 - (1 + i / 10))
               for i in range(10)]
    s = summarize(stalled, rate=10, seconds=1, warmup=0)
    assert s.p50_ms == pytest.approx(501, abs=0.01)  # not 1 ms
    assert s.max_ms == pytest.approx(1001, abs=0.01)
    assert s.send_lag_p99_ms == pytest.approx(1000, abs=0.01)


def test_warm_up_is_left_out_and_errors_are_counted_by_status() -> None:
    outcomes = [_outcome(0.1 * i, 5.0) for i in range(10)]  # warm-up: slow, left out
    outcomes += [_outcome(1 + 0.1 * i, 0.010) for i in range(8)]
    outcomes += [_outcome(1.8, 0.020, "503"), _outcome(1.9, 10.0, "timeout")]
    outcomes.append(_outcome(1.85, 0.012, approved=False))
    s = summarize(outcomes, rate=10, seconds=1, warmup=1)
    assert (s.sent, s.answered, s.ok, s.approved) == (11, 10, 9, 8)
    assert s.errors == {"503": 1, "timeout": 1}
    assert s.approval_share == pytest.approx(8 / 9)
    assert s.p50_ms == pytest.approx(10)
    assert s.max_ms == pytest.approx(10_000)
    assert (s.ok_p50_ms, s.ok_p99_ms) == (pytest.approx(10), pytest.approx(12))
    assert s.achieved_rate == pytest.approx(9 / (11.9 - 1.0))
    with pytest.raises(ValueError):
        summarize(outcomes[:10], rate=10, seconds=1, warmup=1)


def _summary(rate: float, p99: float, ok: int = 100) -> Summary:
    return Summary(rate=rate, seconds=20, warmup=3, sent=100, answered=100, ok=ok, approved=ok,
                   errors={} if ok == 100 else {"503": 100 - ok}, p50_ms=p99 / 2,
                   p90_ms=p99, p99_ms=p99, max_ms=p99, achieved_rate=rate, send_lag_p99_ms=1)


def test_a_rate_is_held_with_every_answer_200_and_the_p99_within_the_limit() -> None:
    assert held(_summary(100, 99.9))
    assert held(_summary(100, 100.0))
    assert not held(_summary(100, 100.1))
    assert not held(_summary(100, 20, ok=99))


def test_the_highest_held_rate_is_the_last_step_before_the_first_miss() -> None:
    steps = [_summary(50, 20), _summary(100, 60), _summary(150, 140), _summary(200, 90)]
    assert highest_held(steps) == 100  # 200 passing after 150 failed does not count
    assert highest_held(list(reversed(steps))) == 100
    assert highest_held([_summary(25, 300)]) is None
    assert highest_held([]) is None
    assert highest_held(steps, limit_ms=50) == 50
