"""Index a chain into a database and read back its canonical views, for comparing two indexes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, select

from cardpay.devstack.local_chain import LocalChain
from cardpay.handlers.chain import ChainSinkHandler
from cardpay.postgres.engine import make_engine
from cardpay.postgres.log_feed import PostgresLogFeed
from cardpay.postgres.schema import chain_activity, rm_payments
from cardpay.postgres.uow import projection_uow_factory, unit_of_work_factory
from listener.poller import Listener, RangeResult
from listener.presets import ChainConfig, local_config
from listener.rpc import HttpJsonRpc
from projector.runner import Projector


def make_listener(engine: Engine, rpc_url: str, config: ChainConfig, start_block: int, *,
                  confirmations: int = 0, name: str = "test",
                  seen: list[RangeResult] | None = None, **kwargs: Any) -> Listener:
    sink = ChainSinkHandler(unit_of_work_factory(engine, None), chain_id=config.chain_id)
    return Listener(name, HttpJsonRpc(rpc_url, retries=0), sink, config,
                    start_block=start_block, confirmations=confirmations,
                    on_range=seen.append if seen is not None else None, **kwargs)


def project(engine: Engine) -> None:
    async def go() -> None:
        projector = Projector("payments", PostgresLogFeed(engine), projection_uow_factory(engine))
        await projector.start()
        await projector.run_until_idle()
        await projector.stop()

    asyncio.run(go())


def canonical_views(engine: Engine) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Payments that rest on the chain now (retracted ones left out) and the classified activity."""
    with engine.connect() as conn:
        payments = conn.execute(
            select(rm_payments.c.payment_id, rm_payments.c.account, rm_payments.c.currency,
                   rm_payments.c.status, rm_payments.c.spent, rm_payments.c.refunded,
                   rm_payments.c.spend_tx)
            .where(rm_payments.c.status != "retracted").order_by(rm_payments.c.payment_id)
        ).all()
        activity = conn.execute(
            select(chain_activity).order_by(chain_activity.c.block_number,
                                            chain_activity.c.log_index)
        ).all()
    return [tuple(r) for r in payments], [tuple(r) for r in activity]


def fresh_index(make_db: Callable[[], str], chain: LocalChain) -> tuple[list[Any], list[Any]]:
    """The canonical views of the chain as it is now, indexed from scratch into a new database:
    what an index that lived through reorgs, faults or resets must equal."""
    engine = make_engine(make_db())
    try:
        make_listener(engine, chain.rpc_url, local_config(chain.deployment.to_dict()),
                      chain.deployment.deployed_at_block).run_until_caught_up()
        project(engine)
        return canonical_views(engine)
    finally:
        engine.dispose()
