"""Pure pieces of the listener's recovery: the planner's log cap and quarantine reason classes."""

from __future__ import annotations

import itertools

import pytest

from domain.money import Currency
from listener.decode import SPEND_TOPIC, TRANSFER_TOPIC
from listener.poller import Listener
from listener.ports import BlockRef, ChainBatch, Cursor
from listener.presets import ChainConfig
from listener.quarantine import REASON_CLASSES, reason_class
from listener.ranges import RangePlanner
from tests.support.chain import EURE, ROLES, SAFE, SETTLEMENT, SPENDER, RecordedNode, word

pytestmark = pytest.mark.unit


def test_a_response_within_the_log_cap_is_applied_whole() -> None:
    planner = RangePlanner(size=100, max_logs=10)
    assert planner.cut(1, 100, [5] * 10) == 100


def test_an_over_full_response_is_cut_at_whole_blocks_under_the_cap() -> None:
    planner = RangePlanner(size=100, max_logs=10)
    numbers = [1] * 4 + [2] * 4 + [3] * 4 + [7] * 4
    assert planner.cut(1, 100, numbers) == 2  # blocks 1..2 hold 8 logs; with block 3, 12


def test_blocks_without_logs_after_the_cut_point_stay_in_the_first_part() -> None:
    planner = RangePlanner(size=100, max_logs=10)
    numbers = [1] * 6 + [50] * 6
    assert planner.cut(1, 100, numbers) == 49


def test_a_single_over_full_block_is_applied_alone() -> None:
    planner = RangePlanner(size=100, max_logs=10)
    assert planner.cut(3, 100, [3] * 25 + [4]) == 3
    assert planner.cut(3, 3, [3] * 25) == 3


def test_after_an_over_full_response_the_planner_shrinks_to_the_log_density() -> None:
    planner = RangePlanner(size=1000, maximum=2000, target_logs=5_000, max_logs=10_000)
    planner.over_full(1000, 200_000)  # 200 logs per block
    assert planner.size == 25  # ~5,000 logs


@pytest.mark.parametrize(("reason", "expected"), [
    ("duplicate log: already applied", "duplicate"),
    ("address: expected 20 bytes, got 19", "malformed"),
    ("log is not an object: 'x'", "malformed"),
    ("missing field 'topics'", "malformed"),
    ("Transfer: expected 3 topics, got 2", "undecodable"),
    ("unknown event topic0 0xabc", "undecodable"),
    ("anonymous log (no topic0)", "undecodable"),
    ("transfer of 1 EURe from the settlement account to 0xab in 0xcd matches no submitted "
     "refund (yet)", "unmatched_refund"),
    ("Spend without its token Transfer to the settlement account in the same transaction: "
     "cardholder unknown", "unmatched_spend"),
    ("log 0xab:1 is in block 5, whose header is not recorded", "unrecorded_block"),
    ("payment p: cannot confirm a spend twice", "refused"),
])
def test_quarantine_reasons_fall_in_a_small_fixed_set(reason: str, expected: str) -> None:
    assert reason_class(reason) == expected
    assert expected in REASON_CLASSES


# -- the listener applies an over-full response in parts, none lost or repeated ------------------
class _MemorySink:
    def __init__(self) -> None:
        self.cursor: Cursor | None = None
        self.batches: list[ChainBatch] = []

    def load_cursor(self, name: str) -> Cursor | None:
        return self.cursor

    def recent_blocks(self, name: str) -> list[BlockRef]:
        return []

    def apply(self, name: str, batch: ChainBatch) -> None:
        assert batch.previous == self.cursor
        self.batches.append(batch)
        self.cursor = batch.cursor

    def rollback(self, name: str, ancestor: BlockRef, previous: Cursor) -> int:
        raise AssertionError("no reorg here")


def _spend(node: RecordedNode, block: int, tx: int, index: int) -> None:
    """A Transfer into the settlement account and its Spend, at log indices index, index+1."""
    amount = 10**18
    node.add_log(block, tx, index, EURE,
                 [TRANSFER_TOPIC, "0x" + word(SAFE), "0x" + word(SETTLEMENT)], "0x" + word(amount))
    node.add_log(block, tx, index + 1, SPENDER, [SPEND_TOPIC],
                 "0x" + word(EURE) + word(ROLES) + word(SETTLEMENT) + word(amount))


def test_an_over_full_range_is_split_before_it_is_applied() -> None:
    node = RecordedNode()
    tx = 0
    for block, spends in ((2, 3), (3, 4), (5, 2), (9, 8), (10, 1)):  # 8 spends in block 9
        for i in range(spends):
            tx += 1
            _spend(node, block, tx, 2 * i)
    node.head = 12
    config = ChainConfig(chain_id=1, settlement=SETTLEMENT, spender_modules=frozenset({SPENDER}),
                         tokens={EURE: Currency("EURe", 18)})
    sink = _MemorySink()
    listener = Listener("t", node, sink, config, start_block=1, confirmations=0,
                        max_range=100, max_logs=6)
    listener.run_until_caught_up()
    assert sink.cursor is not None and sink.cursor.block_number == 12
    spans = [(b.previous.block_number + 1 if b.previous else 1, b.cursor.block_number)
             for b in sink.batches]
    assert all(prev[1] + 1 == nxt[0] for prev, nxt in itertools.pairwise(spans))  # no gap
    for batch in sink.batches:
        blocks = {cmd.evidence.block_number for cmd in batch.commands}
        assert 2 * len(batch.commands) <= 6 or len(blocks) == 1  # over the cap: one block only
    ids = [cmd.command_id for b in sink.batches for cmd in b.commands]
    assert len(ids) == len(set(ids)) == tx  # every spend once
    # The over-full response is applied in parts, not fetched again for its tail.
    assert node.calls.count("eth_getLogs") == 1
