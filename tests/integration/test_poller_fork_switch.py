"""Nodes that switch branches: between the cursor check and the range read, and back and forth.

Every other reorg test changes the chain between polls, so the check of the block under the
cursor sees the reorg first. Here the node answers for the cursor's block from the old branch and
everything after from the new one: only the parent-hash check of the range's first block can
notice, and without it the old branch's spend would stay counted for ever.
"""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, select

from cardpay.handlers.chain import ChainSinkHandler
from cardpay.postgres.schema import quarantine, rm_payments
from cardpay.postgres.uow import unit_of_work_factory
from domain.money import Currency
from listener.poller import Listener, RangeResult
from listener.ports import Cursor
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


def _reasons(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(quarantine.c.reason)).scalars())


def test_a_node_flapping_between_two_branches_retracts_each_orphaned_spend_once(
    pg_engine: Engine,
) -> None:
    """A, then the longer B, then A grown longer again, then B again: the spend of A's block 4
    is confirmed, retracted, confirmed again and retracted again. The second rollback of A's block
    finds two PaymentSpent events from that one log; only the one the payment still rests on is
    retracted (retracting the other would be refused by the model and land in quarantine)."""
    old, new = _branches()
    node = SwitchingNode(before=old, after=new)
    seen: list[RangeResult] = []
    sink = ChainSinkHandler(unit_of_work_factory(pg_engine, None), chain_id=CONFIG.chain_id)
    listener = Listener("flapping", node, sink, CONFIG, start_block=1, confirmations=0,
                        max_range=10, on_range=seen.append)
    a_spend = payment_id_for_spend(CONFIG.chain_id, _tx(ORPHANED_TX))
    b_spend = payment_id_for_spend(CONFIG.chain_id, _tx(NEW_TX))
    a_late = payment_id_for_spend(CONFIG.chain_id, _tx(50))
    expected = {
        False: {a_spend: ("held", 40 * 10**18), a_late: ("held", 50 * 10**18),
                b_spend: ("retracted", 0)},
        True: {a_spend: ("retracted", 0), a_late: ("retracted", 0), b_spend: ("held", 5 * 10**18)},
    }
    listener.run_until_caught_up()
    for on_b, head in ((True, 8), (False, 10), (True, 12)):
        node.switched = on_b  # between polls: the next poll's cursor check sees it
        (new if on_b else old).head = head
        listener.run_until_caught_up()
        project(pg_engine)
        payments = _payments(pg_engine)
        assert {pid: payments[pid] for pid in expected[on_b]} == expected[on_b], (on_b, head)
        cursor = listener.cursor()
        assert cursor is not None
        assert cursor == Cursor(head, (new if on_b else old).block(head)["hash"])

    shared = sorted(spent for pid, (status, spent) in _payments(pg_engine).items()
                    if pid not in expected[True])
    assert shared == [10**18, 2 * 10**18, 3 * 10**18]
    assert _reasons(pg_engine) == []
    # Each rollback retracted what rested on the orphaned blocks, once: A's two spends, B's one,
    # A's two again.
    assert [(r.reorg_depth, r.retracted) for r in seen if r.reorg_depth] == [
        (3, 2), (5, 1), (7, 2)]
