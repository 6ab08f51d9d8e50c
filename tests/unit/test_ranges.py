"""Adaptive eth_getLogs ranges: which provider errors mean "range too large", and the planner."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from listener.errors import RpcError
from listener.ranges import RangePlanner, is_range_too_large, suggested_range

pytestmark = pytest.mark.unit

INFURA = "query returned more than 10000 results. Try with this block range [0x1, 0x2]."
ALCHEMY = (
    "Log response size exceeded. You can make eth_getLogs requests with up to a 2K block range "
    "and no limit on the response size, or you can request any block range with a cap of 10K "
    "logs in the response. Based on your parameters, this block range should work: "
    "[0x2faf080, 0x2faf7cf]"
)
ANVIL_PAST_HEAD = "BlockOutOfRangeError: block height is 5 but requested was 6"


def rpc_error(message: str, code: int = -32005) -> RpcError:
    return RpcError("eth_getLogs", code, message)


# -- is_range_too_large ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "message",
    [
        INFURA,
        ALCHEMY,
        "block range is too wide",
        "Block range is too wide",
        "exceed maximum block range: 5000",
        "your request exceeds the maximum allowed block range",
        "block range too large",
        "range too large, max range: 1000",
        "query returned more than 20000 results",
        "too many blocks requested",
        "request timed out",
        "Timeout",
        "query timeout exceeded",
    ],
)
def test_provider_limits_mean_the_range_is_too_large(message: str) -> None:
    assert is_range_too_large(rpc_error(message))


@pytest.mark.parametrize(
    "message",
    [
        ANVIL_PAST_HEAD,
        "block height is 100 but requested was 150",
        "execution reverted",
        "invalid params",
        "header not found",
        "missing trie node",
        "unknown block",
        "method not found",
    ],
)
def test_other_errors_do_not(message: str) -> None:
    assert not is_range_too_large(rpc_error(message, -32602))


# -- suggested_range ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (INFURA, (1, 2)),
        (ALCHEMY, (0x2FAF080, 0x2FAF7CF)),
        ("try [0xA,0xff] instead", (10, 255)),
        ("this block range should work: [ 0x10 , 0x10 ]", (16, 16)),
        ("block range is too wide", None),
        ("exceed maximum block range: 5000", None),
        ("try [0x20, 0x10]", None),  # backwards: no usable hint
        ("try [1, 2]", None),  # not hex quantities
        ("try [0x, 0x2]", None),
    ],
)
def test_suggested_range(message: str, expected: tuple[int, int] | None) -> None:
    assert suggested_range(rpc_error(message)) == expected


# -- RangePlanner ---------------------------------------------------------------------------------
def test_plan_never_goes_past_the_safe_block() -> None:
    planner = RangePlanner(size=100)
    assert planner.plan(1, 1_000) == 100
    assert planner.plan(950, 1_000) == 1_000
    assert planner.plan(1_000, 1_000) == 1_000


def test_grows_while_full_ranges_return_few_logs() -> None:
    planner = RangePlanner(size=500, maximum=1_500, target_logs=5_000)
    planner.succeeded(blocks=500, logs=10)
    assert planner.size == 1_000
    planner.succeeded(blocks=1_000, logs=4_999)
    assert planner.size == 1_500  # capped
    planner.succeeded(blocks=1_500, logs=0)
    assert planner.size == 1_500


def test_a_short_range_at_the_head_does_not_grow_it() -> None:
    planner = RangePlanner(size=500)
    planner.succeeded(blocks=3, logs=0)
    assert planner.size == 500


def test_keeps_its_size_between_target_and_twice_target() -> None:
    planner = RangePlanner(size=500, target_logs=5_000)
    for logs in (5_000, 7_500, 10_000):
        planner.succeeded(blocks=500, logs=logs)
        assert planner.size == 500


def test_shrinks_when_a_range_returns_more_than_twice_the_target() -> None:
    planner = RangePlanner(size=500, minimum=200, target_logs=5_000)
    planner.succeeded(blocks=500, logs=10_001)
    assert planner.size == 250
    planner.succeeded(blocks=250, logs=50_000)
    assert planner.size == 200  # floored


def test_refused_without_an_error_or_a_hint_halves() -> None:
    planner = RangePlanner(size=500, minimum=100)
    planner.refused(1, None)
    assert planner.size == 250
    planner.refused(1, rpc_error("block range is too wide"))
    assert planner.size == 125
    planner.refused(1, rpc_error("block range is too wide"))
    assert planner.size == 100
    assert planner.at_minimum
    planner.refused(1, None)
    assert planner.size == 100


def test_refused_with_a_hint_takes_the_hinted_range() -> None:
    planner = RangePlanner(size=500)
    planner.refused(0x100, rpc_error("Try with this block range [0x100, 0x163]."))
    assert planner.size == 100


def test_a_hint_for_another_start_block_is_ignored() -> None:
    planner = RangePlanner(size=500)
    planner.refused(0x101, rpc_error("Try with this block range [0x100, 0x163]."))
    assert planner.size == 250


def test_a_hint_no_smaller_than_the_refused_range_still_shrinks() -> None:
    planner = RangePlanner(size=500)
    planner.refused(1, rpc_error(f"Try with this block range [0x1, {hex(5_000)}]."))
    assert planner.size == 499  # a refused size is never retried as is


def test_a_hint_below_the_minimum_is_floored() -> None:
    planner = RangePlanner(size=500, minimum=50)
    planner.refused(1, rpc_error("Try with this block range [0x1, 0x2]."))
    assert planner.size == 50
    assert planner.at_minimum


HINTS = st.one_of(
    st.none(),
    st.just("block range is too wide"),
    st.tuples(st.integers(0, 3), st.integers(0, 30_000)),  # (start offset, hinted span)
)
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("ok"), st.integers(0, 20_000), st.integers(0, 50_000)),
        st.tuples(st.just("refused"), HINTS),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(
    bounds=st.tuples(st.integers(1, 1_000), st.integers(0, 20_000)).map(
        lambda t: (t[0], t[0] + t[1])),
    start=st.integers(0, 20_000),
    target=st.integers(1, 10_000),
    steps=STEPS,
)
def test_the_planner_stays_within_its_bounds(
    bounds: tuple[int, int], start: int, target: int, steps: list[tuple[object, ...]]
) -> None:
    minimum, maximum = bounds
    size = min(max(start, minimum), maximum)
    planner = RangePlanner(size=size, minimum=minimum, maximum=maximum, target_logs=target)
    first = 1_000
    for step in steps:
        before = planner.size
        if step[0] == "ok":
            blocks, logs = step[1], step[2]
            assert isinstance(blocks, int) and isinstance(logs, int)
            planner.succeeded(blocks, logs)
            if logs > 2 * target:
                assert planner.size == max(minimum, before // 2)
            elif logs < target and blocks >= before:
                # doubles, but not past what the density seen predicts under the log cap
                # (10 % headroom)
                grown = before * 2
                if logs:
                    grown = min(grown, max(before, blocks * planner.max_logs * 9 // (10 * logs)))
                assert planner.size == min(maximum, grown)
            else:
                assert planner.size == before
        else:
            hint = step[1]
            if isinstance(hint, tuple):
                offset, span = hint
                lo = first + offset
                error: RpcError | None = rpc_error(
                    f"Try with this block range [{hex(lo)}, {hex(lo + span)}].")
                planner.refused(first, error)
                if offset == 0:
                    assert planner.size == max(minimum, min(before - 1, span + 1))
                else:
                    assert planner.size == max(minimum, before // 2)
            else:
                error = None if hint is None else rpc_error(str(hint))
                planner.refused(first, error)
                assert planner.size == max(minimum, before // 2)
            # A refusal never grows the range, and shrinks it unless already at the minimum.
            assert planner.size < before or planner.size == minimum
        assert minimum <= planner.size <= maximum
        assert planner.at_minimum == (planner.size == minimum)
        last = planner.plan(first, first + 50_000)
        assert first <= last <= first + 50_000
        assert last - first + 1 == planner.size


@pytest.mark.parametrize("message", ["rate limit exceeded", "Too Many Requests: limit exceeded"])
def test_rate_limits_are_not_range_errors(message: str) -> None:
    from listener.errors import RpcError
    from listener.ranges import is_range_too_large

    assert not is_range_too_large(RpcError("eth_getLogs", -32005, message))


def test_quicknode_range_limit_is_a_range_error() -> None:
    from listener.errors import RpcError
    from listener.ranges import is_range_too_large

    assert is_range_too_large(
        RpcError("eth_getLogs", -32602, "eth_getLogs is limited to a 10,000 range"))


def test_growth_stays_under_the_log_cap_at_the_density_seen() -> None:
    """130 logs per block: doubling 37 blocks (4,810 logs) would reach 74 blocks, about 9,620
    logs, and with uneven blocks often past the 10,000-log cap (a cut and a fetch of the tail
    again). The planner grows only to what the density predicts with headroom: 69 blocks."""
    planner = RangePlanner(size=37, maximum=2000, target_logs=5_000, max_logs=10_000)
    planner.succeeded(37, 37 * 130)
    assert planner.size == 37 * 10_000 * 9 // (10 * 37 * 130) == 69
    planner.succeeded(69, 69 * 130)  # 8,970 logs: over the target, under twice it: kept
    assert planner.size == 69
    sparse = RangePlanner(size=50, maximum=2000)
    sparse.succeeded(50, 100)  # 2 logs per block: doubling is far from the cap
    assert sparse.size == 100
