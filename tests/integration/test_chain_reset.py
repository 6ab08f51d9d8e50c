"""A listener whose node now serves another chain (Anvil restarted: same chain id 31337, another
genesis) is refused; `reset_listener` retracts every payment of the dead chain (also those below
the sink's kept window) and the next index of the live chain equals a fresh one, with the dead
chain's payments retracted, never mixed in."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import Engine, select

from cardpay.bootstrap.demo import chain_config
from cardpay.bootstrap.listen import WrongChain, build_listener, check_chain, reset_listener
from cardpay.devstack.anvil import AnvilNode
from cardpay.devstack.local_chain import LocalChain
from cardpay.metrics import ListenerMetrics
from cardpay.postgres.chain_identity import PostgresChainIdentities
from cardpay.postgres.schema import chain_activity, chain_cursor, chain_identity, rm_payments
from cardpay.settings import Settings
from listener.rpc import HttpJsonRpc
from listener.translate import payment_id_for_spend
from tests.support.indexing import canonical_views, fresh_index, project

pytestmark = pytest.mark.integration

NAME = "main"
WINDOW = 3
"""A small kept window: most of the dead chain's spends are below it when the reset runs."""


def _index(engine: Engine, chain: LocalChain, settings: Settings) -> None:
    config = chain_config(chain.deployment)
    rpc = HttpJsonRpc(chain.rpc_url, retries=0)
    check_chain(rpc, chain.rpc_url, config, PostgresChainIdentities(engine), NAME,
                first_block=chain.deployment.deployed_at_block)
    build_listener(settings, engine, config, rpc_url=chain.rpc_url,
                   start_block=chain.deployment.deployed_at_block, metrics=ListenerMetrics(),
                   window=WINDOW).run_until_caught_up()
    project(engine)




def test_a_restarted_chain_is_refused_then_reset_retracts_the_dead_chain(
    local_chain: LocalChain, pg_url: str, pg_engine: Engine, make_db: Any
) -> None:
    settings = Settings(database_url=pg_url, confirmations=0, listener_name=NAME)
    dead = [local_chain.spend("EURe", i % 4, (i + 1) * 10**18) for i in range(6)]
    local_chain.spend_many([("USDCe", 1, 2_000_000), ("EURe", 2, 3 * 10**17)])
    local_chain.w3.provider.make_request("anvil_mine", ["0xa"])  # the spends leave the window
    _index(pg_engine, local_chain, settings)
    with pg_engine.connect() as conn:
        held = conn.execute(select(rm_payments.c.payment_id)
                            .where(rm_payments.c.status == "held")).scalars().all()
    assert len(held) == 8

    # The node restarts: the same chain id, a new genesis (another timestamp), other spends.
    with AnvilNode(extra_args=["--timestamp", str(int(time.time()) + 10_000)]) as node:
        live = LocalChain(node.rpc_url)
        live.deploy(4)
        live_spends = [live.spend("EURe", i % 4, (i + 7) * 10**16) for i in range(3)]
        with pytest.raises(WrongChain, match=f"cardpay listener reset {NAME}"):
            _index(pg_engine, live, settings)

        report = reset_listener(settings, pg_engine, NAME, from_block=None)
        assert report.retracted == 8
        with pg_engine.connect() as conn:
            assert conn.execute(select(chain_cursor)).all() == []
            assert conn.execute(select(chain_identity)).all() == []
            assert conn.execute(select(chain_activity)).all() == []

        _index(pg_engine, live, settings)
        assert canonical_views(pg_engine) == fresh_index(make_db, live)
        with pg_engine.connect() as conn:
            statuses = dict(conn.execute(select(rm_payments.c.payment_id,
                                                rm_payments.c.status)).all())
    chain_id = local_chain.deployment.chain_id
    for tx in dead:  # the dead chain's payments: retracted, not mixed into the live chain's
        assert statuses[payment_id_for_spend(chain_id, tx.lower())] == "retracted"
    for tx in live_spends:
        assert statuses[payment_id_for_spend(chain_id, tx.lower())] == "held"
    assert sorted(statuses.values()).count("held") == len(live_spends)


def test_a_node_of_another_chain_id_than_the_preset_is_refused(
    local_chain: LocalChain, pg_engine: Engine
) -> None:
    from listener.presets import GNOSIS

    rpc = HttpJsonRpc(local_chain.rpc_url, retries=0)
    with pytest.raises(WrongChain, match="is chain 31337, but the gnosis preset indexes chain 100"):
        check_chain(rpc, local_chain.rpc_url, GNOSIS, PostgresChainIdentities(pg_engine), NAME,
                    first_block=0)
    assert PostgresChainIdentities(pg_engine).load(NAME) is None  # nothing recorded


def test_a_reset_that_would_leave_a_gap_is_refused(
    local_chain: LocalChain, pg_url: str, pg_engine: Engine
) -> None:
    from cardpay.bootstrap.listen import ResetRefused

    settings = Settings(database_url=pg_url, confirmations=0, listener_name=NAME)
    local_chain.spend("EURe", 0, 10**18)
    _index(pg_engine, local_chain, settings)
    at = PostgresChainIdentities(pg_engine).cursor_block(NAME)
    assert at is not None
    with pytest.raises(ResetRefused, match=f"would leave blocks {at + 1}..{at + 9} unindexed"):
        reset_listener(settings, pg_engine, NAME, from_block=at + 10)
    assert PostgresChainIdentities(pg_engine).cursor_block(NAME) == at  # nothing forgotten
    report = reset_listener(settings, pg_engine, NAME, from_block=at + 1)  # nothing to retract
    assert report.retracted == 0
    assert PostgresChainIdentities(pg_engine).cursor_block(NAME) is None
