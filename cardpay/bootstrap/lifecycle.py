"""The whole card-payment lifecycle on real parts, for `cardpay demo`, the e2e tests and the
lifecycle benchmark: PostgreSQL, an Anvil node with the local replicas deployed and cards
registered on its Safes, `cardpay api` (uvicorn on a thread), the simulator's advice endpoint,
and the three long-running loops — the listener, the saga worker (with the settlement desk, the
spend relayer and the refund sender) and the payments projector — in one asyncio task.

Time: the sagas' clock is `ShiftedClock` (the real time plus an offset the caller moves), so a
run can reach the settlement cut-off of today's payments without waiting a day. The API and
the listener keep the real clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import uvicorn
from eth_account import Account
from sqlalchemy import Engine, text

from cardpay.bootstrap import database, payments_projector
from cardpay.bootstrap.api import build_app
from cardpay.bootstrap.cards import register_cards
from cardpay.bootstrap.listen import build_listener, run_listener
from cardpay.bootstrap.project import run_projector
from cardpay.bootstrap.sagas import SagaWorker, build_worker, run_saga_worker
from cardpay.devstack.anvil import AnvilNode, free_port
from cardpay.devstack.local_chain import LocalChain, LocalDeployment
from cardpay.devstack.network_advices import AdviceRecorder
from cardpay.devstack.network_oracle import SimCard
from cardpay.handlers.ports import Card
from cardpay.metrics.listener import ListenerMetrics
from cardpay.settings import Secret, Settings
from domain.money import FIAT_TOKENS, Currency
from listener.poller import Listener
from listener.presets import ChainConfig, local_config
from projector.runner import Projector

DEV_MNEMONIC = "test test test test test test test test test test test junk"
"""Anvil's default dev accounts (well known: for a local node only)."""
CONFIRMATIONS = 2


def dev_key(index: int) -> Secret:
    """The private key of Anvil's dev account `index` (LocalChain: 0 deploys and owns the
    settlement account, 1 is the spend relayer)."""
    Account.enable_unaudited_hdwallet_features()
    account = Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
    return Secret("0x" + bytes(account.key).hex())


@dataclass
class ShiftedClock:
    offset: timedelta = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@dataclass
class LifecycleStack:
    settings: Settings
    engine: Engine
    chain: LocalChain
    deployment: LocalDeployment
    config: ChainConfig
    cards: list[SimCard]
    api_url: str
    secret: str
    recorder: AdviceRecorder
    clock: ShiftedClock
    worker: SagaWorker
    listener: Listener
    projector: Projector
    errors: list[str] = field(default_factory=list)


def card_currencies(i: int) -> Sequence[str]:
    """Every Safe has an EURe card; every other one a USDCe card too (the simulator's two
    currencies, from one Safe's two balances)."""
    return ("EURe", "USDCe") if i % 2 == 0 else ("EURe",)


def _cards(deployment: LocalDeployment, config: ChainConfig) -> list[tuple[Card, int]]:
    out: list[tuple[Card, int]] = []
    for i, (safe, module) in enumerate(zip(deployment.cardholders, deployment.roles_modules,
                                           strict=True)):
        for symbol in card_currencies(i):
            token = deployment.token(symbol).address.lower()
            out.append((Card(f"{symbol.lower()}-{i:03d}", safe.lower(), token,
                             config.tokens[token], roles_module=module.lower()), i))
    return out


def _sim_card(card: Card, balance: int, allowance: int | None) -> SimCard:
    fiat = next(f for f, t in FIAT_TOKENS.items() if t.code == card.currency.code)
    shift = card.currency.decimals - fiat.decimals
    return SimCard(card.card_id, fiat, balance // 10**shift,
                   None if allowance is None else allowance // 10**shift,
                   pool=f"{card.safe}:{card.token}")


@contextlib.contextmanager
def _api_server(settings: Settings, engine: Engine) -> Iterator[str]:
    port = free_port()
    config = uvicorn.Config(build_app(settings, engine), host="127.0.0.1", port=port,
                            log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="cardpay-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def lifecycle_stack(settings: Settings, *, cardholders: int,
                    block_time: float = 1.0) -> Iterator[LifecycleStack]:
    """Start everything (the database per `settings`: embedded, or CARDPAY_DATABASE_URL)."""
    secret = "whsec_" + secrets.token_urlsafe(24).replace("-", "A").replace("_", "B")
    with contextlib.ExitStack() as stack:
        node = stack.enter_context(AnvilNode(block_time=block_time))
        chain = LocalChain(node.rpc_url)
        deployment = chain.deploy(n_cardholders=cardholders)
        config = local_config(deployment.to_dict())
        recorder = stack.enter_context(AdviceRecorder(secret))
        settings = replace(settings, rpc_url=node.rpc_url, confirmations=CONFIRMATIONS,
                           relayer_key=dev_key(1), settlement_key=dev_key(0),
                           webhook_secrets=(secret,), network_advice_url=recorder.url,
                           sweep_interval_s=0)
        engine = stack.enter_context(database(settings))
        wanted = _cards(deployment, config)
        done = register_cards(settings, engine, config, node.rpc_url, [c for c, _ in wanted])
        cards = [_sim_card(r.card, r.reading.balance if r.reading else 0,
                           r.reading.allowance.balance
                           if r.reading and r.reading.allowance else None) for r in done]
        api_url = stack.enter_context(_api_server(settings, engine))
        clock = ShiftedClock()
        worker = build_worker(settings, engine, clock=clock, chain=config)
        listener = build_listener(settings, engine, config, rpc_url=node.rpc_url,
                                  start_block=deployment.deployed_at_block,
                                  metrics=ListenerMetrics())
        yield LifecycleStack(settings, engine, chain, deployment, config, cards, api_url,
                             secret, recorder, clock, worker, listener,
                             payments_projector(settings, engine))


async def run_services(s: LifecycleStack, stop: asyncio.Event) -> None:
    """The listener, the saga worker and the projector until `stop`."""

    async def guarded(name: str, work: Any) -> None:
        try:
            await work
        except Exception as exc:  # reported by the caller's check
            s.errors.append(f"{name}: {type(exc).__name__}: {exc}")
            stop.set()

    await asyncio.gather(
        guarded("listener", run_listener(s.listener, stop=stop, poll_interval=0.2)),
        guarded("saga worker", run_saga_worker(s.worker, stop, poll_timeout=0.2)),
        guarded("projector", run_projector(s.projector, stop, poll_timeout=0.2)))


def counts(engine: Engine) -> dict[str, int]:
    """What the lifecycle waits on, from the database."""
    with engine.connect() as conn:
        row = conn.execute(text(
            "SELECT"
            " (SELECT count(DISTINCT stream_id) FROM events WHERE type = 'PaymentAuthorized'"
            "    OR (type = 'AuthorizationAdvised' AND (data->>'approved')::boolean)) AS approved,"
            " (SELECT count(DISTINCT stream_id) FROM events WHERE type = 'PaymentSpent') AS spent,"
            " (SELECT count(DISTINCT stream_id) FROM events WHERE type = 'PaymentReversed')"
            "    AS reversed,"
            " (SELECT count(*) FROM saga_effects WHERE status = 'pending') AS pending_effects,"
            " (SELECT count(*) FROM saga_timers) AS timers,"
            " (SELECT coalesce(max(position), 0) FROM events) AS last_event,"
            " (SELECT coalesce(max(position), 0) FROM consumer_positions"
            "    WHERE consumer = 'sagas') AS saga_position")).one()
    return dict(row._mapping)


def wait_for(engine: Engine, done: Any, *, timeout: float, what: str,
             poll: float = 0.25) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        now = counts(engine)
        if done(now):
            return now
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f}s: {now}")
        time.sleep(poll)


def spends_settled(now: dict[str, int]) -> bool:
    """Every approval spent on chain (or undone), and the sagas caught up with the log."""
    return (now["approved"] > 0 and now["spent"] + now["reversed"] >= now["approved"]
            and now["saga_position"] > now["last_event"])


def quiet(now: dict[str, int]) -> bool:
    return now["pending_effects"] == 0 and now["saga_position"] > now["last_event"]


__all__ = ["CONFIRMATIONS", "Currency", "LifecycleStack", "ShiftedClock", "counts", "dev_key",
           "lifecycle_stack", "quiet", "run_services", "spends_settled", "wait_for"]
