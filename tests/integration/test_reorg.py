"""Reorgs on a real Anvil node: after each one the read models equal a fresh index of the chain."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, select

from cardpay.bootstrap.demo import chain_config
from cardpay.devstack.artifacts import load_artifact
from cardpay.handlers.payments import PaymentService
from cardpay.postgres.schema import events, expected_refunds, rm_payments
from cardpay.postgres.uow import unit_of_work_factory
from domain.commands import RecordRefundSubmission, RequestRefund
from domain.money import Currency, Money
from listener.poller import RangeResult
from listener.translate import payment_id_for_spend
from tests.support.indexing import canonical_views, fresh_index, make_listener, project

pytestmark = pytest.mark.integration


def _spend_request(chain: Any, sender: str, cardholder: int, amount: int) -> dict[str, Any]:
    return dict(chain.spend_request("EURe", cardholder, amount, sender=sender))


def _add_relayer(chain: Any, relayer: str) -> None:
    """A second sender of spends: an enabled module of the spender module."""
    d = chain.deployment
    module = chain.w3.eth.contract(address=d.spender_module,
                                   abi=load_artifact("SpenderModule").abi)
    tx = {"from": d.deployer, "to": d.spender_module,
          "data": module.encode_abi("enableModule", args=[relayer]), "gas": hex(100_000)}
    chain.w3.provider.make_request("eth_sendTransaction", [tx])




@pytest.mark.parametrize("depth", range(1, 31))
def test_reorg_at_depth_matches_a_fresh_index(
    depth: int, local_chain: Any, anvil_node: Any, pg_engine: Engine, make_db: Any
) -> None:
    relayer2 = local_chain.accounts[9]
    _add_relayer(local_chain, relayer2)
    txs = [local_chain.spend("EURe", i % 4, (i + 1) * 10**17) for i in range(depth + 3)]
    config = chain_config(local_chain.deployment)
    seen: list[RangeResult] = []
    listener = make_listener(pg_engine, local_chain.rpc_url, config,
                             local_chain.deployment.deployed_at_block, seen=seen, max_range=7)
    listener.run_until_caught_up()
    project(pg_engine)

    # Replace the last `depth` blocks: the first half of their spends come back in other
    # blocks (shifted by one), the rest vanish, and a spend nobody saw before appears.
    orphaned = txs[-depth:]
    back = orphaned[: (depth + 1) // 2]
    raw = [anvil_node.rpc("eth_getRawTransactionByHash", [tx]) for tx in back]
    replacement = [[r, min(i + 1, depth - 1)] for i, r in enumerate(raw)]
    replacement.append([_spend_request(local_chain, relayer2, 3, 777 * 10**15), 0])
    anvil_node.rpc("anvil_reorg", [depth, replacement])
    local_chain.w3.provider.make_request("anvil_mine", ["0x1"])

    listener.run_until_caught_up()
    project(pg_engine)

    reorgs = [r for r in seen if r.reorg_depth]
    assert [r.reorg_depth for r in reorgs] == [depth]
    assert reorgs[0].retracted == depth
    assert canonical_views(pg_engine) == fresh_index(make_db, local_chain)
    with pg_engine.connect() as conn:
        statuses = dict(conn.execute(select(rm_payments.c.spend_tx, rm_payments.c.status)).all())
    for tx in back:  # moved into another block: the same payment, confirmed again
        receipt = local_chain.receipt(tx)
        assert receipt is not None
        assert statuses[tx.lower()] == "held"
    with pg_engine.connect() as conn:  # the spend only the new branch has
        new_spends = conn.execute(select(rm_payments.c.spent)
                                  .where(rm_payments.c.spent == 777 * 10**15)).all()
    assert len(new_spends) == 1
    vanished = {tx.lower() for tx in orphaned[len(back):]}
    assert not vanished & {tx for tx, status in statuses.items() if status == "held"}


def test_refund_reorged_out_is_in_flight_again_then_confirmed_when_remined(
    local_chain: Any, anvil_node: Any, pg_engine: Engine
) -> None:
    from datetime import UTC, datetime

    d = local_chain.deployment
    config = chain_config(d)
    spend_tx = local_chain.spend("EURe", 0, 5 * 10**18)
    listener = make_listener(pg_engine, local_chain.rpc_url, config, d.deployed_at_block)
    listener.run_until_caught_up()
    payment_id = payment_id_for_spend(d.chain_id, spend_tx.lower())
    service = PaymentService(unit_of_work_factory(pg_engine, None))
    now, amount = datetime.now(UTC), Money(2 * 10**18, Currency("EURe", 18))
    service.submit(RequestRefund(command_id="rq", payment_id=payment_id, at=now, refund_id="r",
                                 amount=amount, reason="test"))
    refund_tx = local_chain.refund("EURe", 0, amount.units)
    service.record_refund_submission(
        RecordRefundSubmission(command_id="rs", payment_id=payment_id, at=now, refund_id="r",
                               tx_hash=refund_tx),
        recipient=d.cardholders[0], token=d.token("EURe").address, amount=amount.units)
    listener.run_until_caught_up()
    project(pg_engine)

    def refunded() -> int:
        with pg_engine.connect() as conn:
            return int(conn.execute(select(rm_payments.c.refunded)).scalar_one())

    assert refunded() == amount.units
    raw = anvil_node.rpc("eth_getRawTransactionByHash", [refund_tx])
    anvil_node.rpc("anvil_reorg", [1, []])  # the refund's block is gone, the refund with it
    listener.run_until_caught_up()
    project(pg_engine)
    assert refunded() == 0
    with pg_engine.connect() as conn:
        assert conn.execute(select(expected_refunds.c.matched_by)).scalar_one() is None
        types = list(conn.execute(select(events.c.type).order_by(events.c.position)).scalars())
    assert types[-1] == "RefundRetracted"

    anvil_node.rpc("eth_sendRawTransaction", [raw])  # re-mined in a later block
    listener.run_until_caught_up()
    project(pg_engine)
    assert refunded() == amount.units


def test_snapshot_revert_reorg_with_a_transaction_in_a_different_block(
    local_chain: Any, anvil_node: Any, pg_engine: Engine, make_db: Any
) -> None:
    """evm_snapshot / evm_revert: the chain after the snapshot is replaced by one where the same
    spend lands two blocks later, next to a spend the first branch never had."""
    config = chain_config(local_chain.deployment)
    seen: list[RangeResult] = []
    listener = make_listener(pg_engine, local_chain.rpc_url, config,
                             local_chain.deployment.deployed_at_block, seen=seen)
    local_chain.spend("USDCe", 1, 4_200_000)
    snapshot = anvil_node.rpc("evm_snapshot")
    moved = local_chain.spend("EURe", 2, 3 * 10**18)
    local_chain.spend("EURe", 3, 10**18)
    listener.run_until_caught_up()
    project(pg_engine)
    raw = anvil_node.rpc("eth_getRawTransactionByHash", [moved])
    first_block = local_chain.receipt(moved)["blockNumber"]

    assert anvil_node.rpc("evm_revert", [snapshot]) is True
    anvil_node.rpc("anvil_mine", ["0x2"])
    anvil_node.rpc("eth_sendRawTransaction", [raw])  # the same transaction, another block
    local_chain.spend("USDCe", 0, 1_000_000)
    anvil_node.rpc("anvil_mine", ["0x1"])  # the new branch is longer than the old one
    assert local_chain.receipt(moved)["blockNumber"] != first_block

    listener.run_until_caught_up()
    project(pg_engine)
    assert any(r.reorg_depth for r in seen)
    assert canonical_views(pg_engine) == fresh_index(make_db, local_chain)
    with pg_engine.connect() as conn:
        statuses = dict(conn.execute(select(rm_payments.c.spend_tx, rm_payments.c.status)).all())
    assert statuses[moved.lower()] == "held"


def test_a_reorg_deeper_than_a_small_window_is_repaired_by_a_reset_from_the_named_block(
    local_chain: Any, anvil_node: Any, pg_url: str, pg_engine: Engine, make_db: Any
) -> None:
    """Window 4: a reorg of 9 blocks leaves no kept hash canonical. The listener stops with
    ReorgTooDeep; `fork_floor` names the block to reset from (one above the newest indexed block
    the node still has), and reset + index again equals a fresh index of the new chain."""
    from cardpay.bootstrap.listen import build_listener, check_chain, fork_floor, reset_listener
    from cardpay.metrics import ListenerMetrics
    from cardpay.postgres.chain_identity import PostgresChainIdentities
    from cardpay.settings import Settings
    from listener.errors import ReorgTooDeep
    from listener.rpc import HttpJsonRpc

    config = chain_config(local_chain.deployment)
    settings = Settings(database_url=pg_url, confirmations=0, listener_name="small")
    rpc = HttpJsonRpc(local_chain.rpc_url, retries=0)
    start = local_chain.deployment.deployed_at_block
    check_chain(rpc, local_chain.rpc_url, config, PostgresChainIdentities(pg_engine), "small",
                first_block=start)

    def listener(first: int) -> Any:
        return build_listener(settings, pg_engine, config, rpc_url=local_chain.rpc_url,
                              start_block=first, metrics=ListenerMetrics(), window=4)

    local_chain.spend("EURe", 0, 10**18)
    kept_spend = int(anvil_node.rpc("eth_blockNumber"), 16)
    anvil_node.rpc("anvil_mine", ["0x2"])
    moved = [local_chain.spend("EURe", i, (i + 2) * 10**17) for i in range(3)]
    anvil_node.rpc("anvil_mine", ["0x4"])
    listener(start).run_until_caught_up()

    depth = int(anvil_node.rpc("eth_blockNumber"), 16) - kept_spend - 2
    raw = anvil_node.rpc("eth_getRawTransactionByHash", [moved[0]])
    anvil_node.rpc("anvil_reorg", [depth, [[raw, 3]]])
    anvil_node.rpc("anvil_mine", ["0x1"])
    with pytest.raises(ReorgTooDeep) as stopped:
        listener(start).run_until_caught_up()
    below = stopped.value.oldest_kept
    assert below is not None
    floor = fork_floor(pg_engine, rpc, config.chain_id, "small", below)
    assert floor == kept_spend + 1

    report = reset_listener(settings, pg_engine, "small", from_block=floor)
    assert report.retracted == len(moved)
    listener(floor).run_until_caught_up()
    project(pg_engine)
    assert canonical_views(pg_engine) == fresh_index(make_db, local_chain)
