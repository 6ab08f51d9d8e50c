"""No range is too big: more than 100,000 spends in one block range, one of its blocks alone
holding more spends than PostgreSQL can bind parameters in one statement, indexed in one backfill
into the real PostgreSQL sink.

The node is the in-memory recorded node (tests/support/chain.py): making 100,000 spends on Anvil
takes about 85 s on the 2-core test machine (measured with benchmarks/workload.py, 1,000 spends per
transaction), longer than this test may run; the database side is the real one. The sink's
throughput sets the run time: about 25 s on a quiet machine (docs/benchmarks.md), 2-3 minutes
while other test runs share the 2 cores.
"""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import Engine, func, select

from cardpay.handlers.chain import ChainSinkHandler
from cardpay.postgres.schema import events, quarantine
from cardpay.postgres.uow import unit_of_work_factory
from domain.money import Currency
from listener.decode import SPEND_TOPIC, TRANSFER_TOPIC
from listener.poller import Listener, RangeResult
from listener.presets import ChainConfig
from tests.support.chain import EURE, ROLES, SAFE, SETTLEMENT, SPENDER, RecordedNode, word

pytestmark = pytest.mark.integration

CONFIG = ChainConfig(chain_id=100, settlement=SETTLEMENT, spender_modules=frozenset({SPENDER}),
                     tokens={EURE: Currency("EURe", 18)})
CROWDED_BLOCK = 70_000
"""Spends in one block: 70,000 payment ids to load at once, over the 65,535 bind parameters."""
OTHER_BLOCKS, PER_BLOCK = 40, 800
MIN_SPENDS = 100_000


def _add_spends(node: RecordedNode, block: int, count: int, first_tx: int) -> None:
    """`count` spends (Transfer into the settlement account + Spend) in `block`, one per tx."""
    transfer = [TRANSFER_TOPIC, "0x" + word(SAFE), "0x" + word(SETTLEMENT)]
    for i in range(count):
        amount = 10**16 + i
        node.add_log(block, first_tx + i, 2 * i, EURE, transfer, "0x" + word(amount))
        node.add_log(block, first_tx + i, 2 * i + 1, SPENDER, [SPEND_TOPIC],
                     "0x" + word(EURE) + word(ROLES) + word(SETTLEMENT) + word(amount))


def test_more_than_100000_spends_in_one_range_are_indexed_in_one_backfill(
    pg_engine: Engine,
) -> None:
    node = RecordedNode()
    _add_spends(node, 5, CROWDED_BLOCK, 1)
    tx = CROWDED_BLOCK + 1
    for block in range(6, 6 + OTHER_BLOCKS):
        _add_spends(node, block, PER_BLOCK, tx)
        tx += PER_BLOCK
    spends = tx - 1
    assert spends > MIN_SPENDS
    node.head = 60
    sink = ChainSinkHandler(unit_of_work_factory(pg_engine, None), chain_id=CONFIG.chain_id)
    seen: list[RangeResult] = []
    listener = Listener("big", node, sink, CONFIG, start_block=1, confirmations=0,
                        max_range=2000, on_range=seen.append)  # the whole chain is one range
    listener.run_until_caught_up()

    cursor = listener.cursor()
    assert cursor is not None and cursor.block_number == 60
    with pg_engine.connect() as conn:
        spent = conn.execute(select(func.count()).select_from(events)
                             .where(events.c.type == "PaymentSpent")).scalar_one()
        payments = conn.execute(select(func.count(func.distinct(events.c.stream_id)))).scalar_one()
        quarantined = conn.execute(select(func.count()).select_from(quarantine)).scalar_one()
    assert (spent, payments, quarantined) == (spends, spends, 0)  # each once, none refused
    applied = [r for r in seen if not r.reorg_depth]
    assert applied[0].from_block == 1
    assert all(a.to_block + 1 == b.from_block for a, b in itertools.pairwise(applied))
    crowded = [r for r in applied if r.from_block <= 5 <= r.to_block]
    assert len(crowded) == 1 and crowded[0].logs == 2 * CROWDED_BLOCK  # one block: not split
    assert all(r.logs <= 10_000 for r in applied if r is not crowded[0])  # the rest capped
