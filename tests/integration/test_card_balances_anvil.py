"""A registered card's balance and allowance on a real Anvil chain: read once with balanceOf at
registration, then moved by the listener with every indexed top-up and spend, and rolled back
by a reorg — always equal to what the chain says, without asking it per authorization."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine

from cardpay.bootstrap.cards import allowance_token
from cardpay.bootstrap.demo import chain_config
from cardpay.bootstrap.listen import with_registered_roles_modules
from cardpay.handlers.cards import register_card
from cardpay.handlers.ports import Card, LockedCard
from cardpay.onchain.readings import RpcChainReader
from cardpay.postgres.uow import unit_of_work_factory
from domain.money import Currency
from listener.rpc import HttpJsonRpc
from tests.support.indexing import make_listener

pytestmark = pytest.mark.integration

EURE = Currency("EURe", 18)


def _locked(engine: Engine) -> LockedCard:
    with unit_of_work_factory(engine, None)() as uow:
        locked = uow.cards.lock_for_authorization("c0", datetime.now(UTC))
        assert locked is not None
        assert uow.quarantine.list() == []  # every allowance event was attributed
        return locked


def test_balance_is_read_once_then_follows_transfers_and_reorgs(
        local_chain: Any, anvil_node: Any, pg_engine: Engine) -> None:
    d = local_chain.deployment
    config = chain_config(d)
    token = d.token("EURe").address.lower()
    listener = make_listener(pg_engine, local_chain.rpc_url, config, d.deployed_at_block)
    local_chain.spend("EURe", 0, 3 * 10**18)  # before registration: in the reading only
    listener.run_until_caught_up()

    uow = unit_of_work_factory(pg_engine, None)
    rpc = HttpJsonRpc(local_chain.rpc_url, retries=0)
    card = Card("c0", d.cardholders[0].lower(), token, EURE,
                roles_module=d.roles_modules[0].lower())
    reading = register_card(uow, RpcChainReader(rpc, confirmations=0), card, listener="test",
                            allowance_token=allowance_token(config, token))
    assert reading.balance == local_chain.balance_of("EURe", 0) == (10_000 - 3) * 10**18
    assert reading.allowance is not None
    assert reading.block_number == int(anvil_node.rpc("eth_blockNumber"), 16)
    bare = dataclasses.replace(config, roles_modules=frozenset())  # e.g. the gnosis preset
    assert with_registered_roles_modules(bare, pg_engine).roles_modules == {card.roles_module}
    before = _locked(pg_engine)
    assert before.balance == reading.balance
    assert before.allowance is not None
    assert before.allowance.remaining(datetime.now(UTC)) == local_chain.allowance_left(0, "EURe")

    local_chain.mint("EURe", d.cardholders[0], 50 * 10**18)  # a top-up
    local_chain.spend("EURe", 0, 85 * 10**17)  # 8.5 EURe: two Transfer logs (v2 + v1), one move
    local_chain.spend("USDCe", 0, 10**6)  # another token: not this card's
    listener.run_until_caught_up()
    after = _locked(pg_engine)
    assert after.balance == local_chain.balance_of("EURe", 0) == reading.balance + 415 * 10**17
    assert after.allowance is not None
    assert after.allowance.remaining(datetime.now(UTC)) == local_chain.allowance_left(0, "EURe")
    assert after.allowance.balance == before.allowance.balance - 85 * 10**17

    # The last two blocks (the EURe and USDCe spends) are replaced by an empty one.
    anvil_node.rpc("anvil_reorg", [2, []])
    listener.run_until_caught_up()
    rolled_back = _locked(pg_engine)
    assert local_chain.balance_of("EURe", 0) == reading.balance + 50 * 10**18
    assert rolled_back.balance == local_chain.balance_of("EURe", 0)
    assert rolled_back.allowance == before.allowance
    with uow() as w:
        indexed = w.cards.balance(card.safe, token)
    assert indexed is not None and indexed.as_of_block < int(anvil_node.rpc("eth_blockNumber"), 16)
    rpc.close()
