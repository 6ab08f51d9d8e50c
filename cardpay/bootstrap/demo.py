"""The demo's composition root: embedded PostgreSQL, an Anvil node with the local replicas
deployed, and the listener, payment service and projector wired on them.

`cardpay demo` only orchestrates (spend, index, refund, compare); everything it runs on is built
here, from the same pieces the single processes use.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from cardpay.bootstrap import database, payments_projector
from cardpay.devstack.anvil import AnvilNode
from cardpay.devstack.local_chain import LocalChain, LocalDeployment
from cardpay.handlers.chain import ChainSinkHandler
from cardpay.handlers.payments import PaymentService
from cardpay.postgres.uow import unit_of_work_factory
from cardpay.settings import Settings
from listener.poller import Listener
from listener.presets import ChainConfig, local_config
from listener.rpc import HttpJsonRpc
from projector.runner import Projector

CONFIRMATIONS = 2
LISTENER = "demo"


def chain_config(deployment: LocalDeployment) -> ChainConfig:
    return local_config(deployment.to_dict())


@dataclass
class DemoStack:
    settings: Settings
    engine: Engine
    chain: LocalChain
    deployment: LocalDeployment
    listener: Listener
    payments: PaymentService

    def projector(self) -> Projector:
        return payments_projector(self.settings, self.engine)


@contextlib.contextmanager
def demo_stack(cardholders: int, *, keep: Path | None = None) -> Iterator[DemoStack]:
    """Start everything; on exit stop it all (the database is deleted unless `keep` is given)."""
    with contextlib.ExitStack() as stack:
        data_dir = keep if keep is not None else Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="cardpay-demo-")))
        settings = Settings(data_dir=data_dir)
        engine = stack.enter_context(database(settings))
        node = stack.enter_context(AnvilNode())
        chain = LocalChain(node.rpc_url)
        deployment = chain.deploy(n_cardholders=cardholders)
        uows = unit_of_work_factory(engine, settings.outbox_topic)
        rpc = HttpJsonRpc(node.rpc_url)
        stack.callback(rpc.close)
        listener = Listener(
            LISTENER, rpc, ChainSinkHandler(uows, chain_id=deployment.chain_id),
            chain_config(deployment), start_block=deployment.deployed_at_block,
            confirmations=CONFIRMATIONS, max_range=500,
        )
        yield DemoStack(settings, engine, chain, deployment, listener, PaymentService(uows))
