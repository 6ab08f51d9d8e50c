"""A node that switches to another branch between the cursor check and the range read.

Every other reorg test changes the chain between polls, so the check of the block under the
cursor sees the reorg first. Here the node answers for the cursor's block from the old branch and
everything after from the new one: only the parent-hash check of the range's first block can
notice, and without it the old branch's spend would stay counted for ever.
"""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, select

from cardpay.handlers.chain import ChainSinkHandler
from cardpay.postgres.schema import rm_payments
from cardpay.postgres.uow import unit_of_work_factory
from domain.money import Currency
from listener.poller import Listener, RangeResult
from listener.presets import ChainConfig
from listener.translate import payment_id_for_spend
from tests.support.chain import EURE, SETTLEMENT, SPENDER, RecordedNode
from tests.support.indexing import project
from tests.support.switching_node import ForkedNode, SwitchingNode, after_header

pytestmark = pytest.mark.integration

CONFIG = ChainConfig(
    chain_id=100, settlement=SETTLEMENT, spender_modules=frozenset({SPENDER}),
    tokens={EURE: Currency("EURe", 18)},
)
CURSOR_BLOCK = 4
ORPHANED_TX, NEW_TX = 4, 5


def _tx(n: int) -> str:
    return "0x" + format(n, "064x")


def _branches() -> tuple[RecordedNode, ForkedNode]:
    """Blocks 1-3 shared; the old branch spends in block 4, the new one (from block 4) in 5."""
    old, new = RecordedNode(), ForkedNode(fork_from=CURSOR_BLOCK, fork="f0")
    for branch in (old, new):
        for n in (1, 2, 3):
            branch.add_spend(n, tx=n, amount=n * 10**18)
        branch.head = 6
    old.add_spend(CURSOR_BLOCK, tx=ORPHANED_TX, amount=40 * 10**18)
    old.add_spend(5, tx=50, amount=50 * 10**18)  # never read: the node switches first
    new.add_spend(5, tx=NEW_TX, amount=5 * 10**18)
    return old, new


def _payments(engine: Engine) -> dict[str, tuple[str, int]]:
    with engine.connect() as conn:
        rows = conn.execute(select(rm_payments.c.payment_id, rm_payments.c.status,
                                   rm_payments.c.spent)).all()
    return {r.payment_id: (r.status, int(r.spent)) for r in rows}


def test_a_fork_switch_after_the_cursor_check_is_rolled_back_by_the_parent_hash(
    pg_engine: Engine,
) -> None:
    old, new = _branches()
    node = SwitchingNode(before=old, after=new)
    seen: list[RangeResult] = []
    sink = ChainSinkHandler(unit_of_work_factory(pg_engine, None), chain_id=CONFIG.chain_id)
    listener = Listener("fork-switch", node, sink, CONFIG, start_block=1, confirmations=0,
                        max_range=10, on_range=seen.append)
    listener.run_until_caught_up(until_block=CURSOR_BLOCK)
    cursor = listener.cursor()
    assert cursor is not None
    assert (cursor.block_number, cursor.block_hash) == (CURSOR_BLOCK, old.block(4)["hash"])
    orphaned = payment_id_for_spend(CONFIG.chain_id, _tx(ORPHANED_TX))
    project(pg_engine)
    assert _payments(pg_engine)[orphaned] == ("held", 40 * 10**18)

    # The node answers for the cursor's block from the old branch, then moves to the new one.
    node.switch_after = after_header(CURSOR_BLOCK)
    listener.run_until_caught_up()
    assert node.switched
    project(pg_engine)

    payments = _payments(pg_engine)
    assert payments[orphaned] == ("retracted", 0)
    assert payments[payment_id_for_spend(CONFIG.chain_id, _tx(NEW_TX))] == ("held", 5 * 10**18)
    counted = sorted(spent for status, spent in payments.values() if status == "held")
    assert counted == [10**18, 2 * 10**18, 3 * 10**18, 5 * 10**18]
    cursor = listener.cursor()
    assert cursor is not None
    assert (cursor.block_number, cursor.block_hash) == (6, new.block(6)["hash"])
    # One rollback of the one orphaned block, decided on the range read after the switch.
    reorgs = [r for r in seen if r.reorg_depth]
    assert [(r.from_block, r.reorg_depth, r.retracted) for r in reorgs] == [(4, 1, 1)]
    assert seen.index(reorgs[0]) == len(seen) - 2  # then one range on the new branch
