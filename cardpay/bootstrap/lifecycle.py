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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import uvicorn
from eth_account import Account
from fastapi import FastAPI
from sqlalchemy import Engine, text
from web3.types import RPCEndpoint

from cardpay.bootstrap import database, payments_projector, unit_of_work
from cardpay.bootstrap.api import build_app
from cardpay.bootstrap.cards import register_cards
from cardpay.bootstrap.listen import build_listener, run_listener
from cardpay.bootstrap.project import run_projector
from cardpay.bootstrap.sagas import SagaWorker, build_worker, run_saga_worker
from cardpay.devstack.anvil import AnvilNode, free_port
from cardpay.devstack.local_chain import LocalChain, LocalDeployment
from cardpay.devstack.network_advices import AdviceRecorder
from cardpay.devstack.network_oracle import SimCard
from cardpay.devstack.network_simulator import card_from_record
from cardpay.handlers.ports import Card
from cardpay.metrics.listener import ListenerMetrics
from cardpay.settings import Secret, Settings
from domain.card_network import NetworkState
from listener.poller import Listener
from listener.presets import GNOSIS, ChainConfig, local_config
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
    """One card per Safe, EURe on even Safes and USDCe on odd ones: a Gnosis Pay Safe spends
    one token (its Roles module's allowance events do not name it)."""
    return ("EURe",) if i % 2 == 0 else ("USDCe",)


def deployment_cards(deployment: LocalDeployment, config: ChainConfig) -> list[Card]:
    """One card per cardholder Safe of `deployment` (`card_currencies`), with its Roles
    module."""
    out: list[Card] = []
    for i, (safe, module) in enumerate(zip(deployment.cardholders, deployment.roles_modules,
                                           strict=True)):
        for symbol in card_currencies(i):
            token = deployment.token(symbol).address.lower()
            out.append(Card(f"{symbol.lower()}-{i:03d}", safe.lower(), token,
                            config.tokens[token], roles_module=module.lower()))
    return out


def registered_cards(settings: Settings, engine: Engine) -> list[SimCard]:
    """The registry's cards as the simulator uses them (what `cardpay cards list --json` gives
    it): balances and allowances left as indexed now."""
    now = datetime.now(UTC)
    records = []
    with unit_of_work(settings, engine)() as uow:
        for card in uow.cards.all():
            balance = uow.cards.balance(card.safe, card.token)
            allowance = uow.cards.allowance(card.safe, card.token) if card.roles_module else None
            records.append({
                "card_id": card.card_id, "status": card.status.value,
                "currency": card.currency.code, "decimals": card.currency.decimals,
                "balance": "0" if balance is None else str(balance.balance),
                "allowance_left": None if allowance is None else str(allowance.remaining(now)),
                "safe": card.safe, "token": card.token})
    return [card_from_record(r, n) for n, r in enumerate(records, 1)]


ApiStarter = Callable[[Settings, Engine], contextlib.AbstractContextManager[str]]


@contextlib.contextmanager
def _api_server(settings: Settings, engine: Engine) -> Iterator[str]:
    with serving(build_app(settings, engine)) as url:
        yield url


@contextlib.contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """`app` served by uvicorn on a thread of this process, on a free port; yields its URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            lifespan="on")
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


@dataclass(frozen=True)
class ForkSource:
    """Run on an Anvil fork of `url` (at `block`, or its head) with the `gnosis` preset: the
    cards are `deployment`'s cardholder Safes (on the upstream chain; e.g. the stand-in's,
    `cardpay.devstack.gnosis_standin`), spends and refunds are sent as the accounts the
    contracts expect, through `anvil_impersonateAccount` (docs/adr/0019)."""

    url: str
    deployment: LocalDeployment
    block: int | None = None


@dataclass(frozen=True)
class _Chain:
    node: AnvilNode
    chain: LocalChain
    deployment: LocalDeployment
    config: ChainConfig
    settings: dict[str, Any]


def fork_config(from_block: int = 0) -> ChainConfig:
    """The `gnosis` preset with refunds matched from `from_block` (the fork's first own block):
    cardpay sends them there (not observer mode)."""
    return replace(GNOSIS, match_refunds=True, refunds_matched_from=from_block)


@contextlib.contextmanager
def _chain(cardholders: int, block_time: int, fork: ForkSource | None) -> Iterator[_Chain]:
    """A fresh Anvil with the local replicas (signing with dev keys), or a fork (impersonating);
    either with a block every `block_time` seconds once the setup is buried below the
    listener's depth."""
    if fork is None:
        node = AnvilNode()  # automine: the deployment at full speed
    else:
        from cardpay.devstack.gnosis_standin import fork_of

        node = fork_of(fork.url, fork.block)
    with node:
        chain = LocalChain(node.rpc_url)
        if fork is None:
            deployment = chain.deploy(n_cardholders=cardholders)
            config = local_config(deployment.to_dict())
            keys: dict[str, Any] = {"relayer_key": dev_key(1), "settlement_key": dev_key(0)}
        else:
            start = int(chain.w3.eth.block_number) + 1
            deployment = replace(fork.deployment, deployed_at_block=start)
            chain = LocalChain(node.rpc_url, deployment)
            config = fork_config(start)
            keys = {"tx_signer": "impersonate", "relayer_key": None, "settlement_key": None}
        # the cards are registered from readings at the listener's depth: bury the deployment
        # first, or a reading taken below its last blocks misses the last mints and allowances
        chain.w3.provider.make_request(RPCEndpoint("anvil_mine"), [hex(CONFIRMATIONS + 1)])
        # then a block every `block_time` seconds, so every spend and refund reaches the
        # listener's depth without waiting for later transactions
        answer = chain.w3.provider.make_request(RPCEndpoint("evm_setIntervalMining"),
                                                [block_time])
        if "error" in answer:
            raise RuntimeError(f"Anvil refused interval mining: {answer['error']}")
        yield _Chain(node, chain, deployment, config, keys)


@contextlib.contextmanager
def lifecycle_stack(settings: Settings, *, cardholders: int, block_time: int = 1,
                    api: ApiStarter = _api_server,
                    fork: ForkSource | None = None) -> Iterator[LifecycleStack]:
    """Start everything (the database per `settings`: embedded, or CARDPAY_DATABASE_URL).
    `api` starts the API with the stack's settings and yields its URL (by default uvicorn on a
    thread of this process; a test may start `cardpay api` processes it can kill). `fork`: on
    a fork of that chain instead of fresh replicas (`cardholders` is then the deployment's)."""
    secret = "whsec_" + secrets.token_urlsafe(24).replace("-", "A").replace("_", "B")
    with contextlib.ExitStack() as stack:
        c = stack.enter_context(_chain(cardholders, block_time, fork))
        recorder = stack.enter_context(AdviceRecorder(secret))
        settings = replace(settings, rpc_url=c.node.rpc_url, confirmations=CONFIRMATIONS,
                           webhook_secrets=(secret,), network_advice_url=recorder.url,
                           sweep_interval_s=0, **c.settings)
        engine = stack.enter_context(database(settings))
        register_cards(settings, engine, c.config, c.node.rpc_url,
                       deployment_cards(c.deployment, c.config))
        cards = registered_cards(settings, engine)
        api_url = stack.enter_context(api(settings, engine))
        clock = ShiftedClock()
        worker = build_worker(settings, engine, clock=clock, chain=c.config)
        listener = build_listener(settings, engine, c.config, rpc_url=c.node.rpc_url,
                                  start_block=c.deployment.deployed_at_block,
                                  metrics=ListenerMetrics())
        yield LifecycleStack(settings, engine, c.chain, c.deployment, c.config, cards, api_url,
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

    relay: list[Any] = []
    if s.settings.kafka_bootstrap:
        from cardpay.bootstrap.relay import build_relay

        outbox, publisher = build_relay(s.settings.kafka_bootstrap, s.engine)
        relay.append(guarded("relay", outbox.run(stop, start_publisher=True, idle_sleep=0.05)))
    await asyncio.gather(
        *relay,
        guarded("listener", run_listener(s.listener, stop=stop, poll_interval=0.2)),
        guarded("saga worker", run_saga_worker(s.worker, stop, poll_timeout=0.2)),
        guarded("projector", run_projector(s.projector, stop, poll_timeout=0.2)))
    if relay:
        await publisher.stop()


def counts(engine: Engine, kafka: bool = False) -> dict[str, int]:
    """What the lifecycle waits on, from the database. `feed_done`: the saga worker and the
    projector have taken every event: on the PostgreSQL log their next positions are past the
    last event; on Kafka (a topic of this run) the outbox is all published and each consumer's
    next offsets add up to the records published."""
    with engine.connect() as conn:
        row = conn.execute(text(
            "SELECT"
            " (SELECT count(DISTINCT stream_id) FROM events WHERE type = 'PaymentAuthorized'"
            "    OR (type = 'AuthorizationAdvised' AND (data->'payload'->>'approved')::boolean)) AS approved,"
            " (SELECT count(DISTINCT stream_id) FROM events WHERE type = 'PaymentSpent') AS spent,"
            " (SELECT count(DISTINCT stream_id) FROM events WHERE type = 'PaymentReversed')"
            "    AS reversed,"
            " (SELECT count(*) FROM saga_effects WHERE status = 'pending') AS pending_effects,"
            " (SELECT count(DISTINCT data->'payload'->>'refund_id') FROM events"
            "    WHERE type = 'RefundSubmitted') AS refunds_sent,"
            " (SELECT count(DISTINCT data->'payload'->>'refund_id') FROM events"
            "    WHERE type = 'PaymentRefunded') AS refunds_seen,"
            " (SELECT count(*) FROM saga_effects"
            "    WHERE name = 'submit_spend' AND status = 'succeeded') AS spends_sent,"
            " (SELECT count(*) FROM events WHERE type = 'PaymentSpent') AS spends_seen,"
            " (SELECT count(*) FROM saga_timers) AS timers,"
            " (SELECT coalesce(max(position), 0) FROM events) AS last_event,"
            " (SELECT count(*) FROM settlement_batches WHERE status IN ('open', 'matching'))"
            "    AS open_batches,"
            " (SELECT coalesce(max(position), 0) FROM consumer_positions"
            "    WHERE consumer = 'sagas') AS saga_position,"
            " (SELECT coalesce(max(position), 0) FROM consumer_positions"
            "    WHERE consumer = 'payments') AS projector_position,"
            " (SELECT coalesce(sum(position), 0) FROM consumer_positions"
            "    WHERE consumer = 'sagas') AS saga_offsets,"
            " (SELECT coalesce(sum(position), 0) FROM consumer_positions"
            "    WHERE consumer = 'payments') AS projector_offsets,"
            " (SELECT count(*) FROM outbox WHERE published_at IS NULL) AS unpublished,"
            " (SELECT count(*) FROM outbox WHERE published_at IS NOT NULL) AS published"
            )).one()
    now = {k: int(v) for k, v in row._mapping.items()}
    if kafka:
        done = (now["unpublished"] == 0 and now["saga_offsets"] == now["published"]
                == now["projector_offsets"])
    else:
        done = now["saga_position"] > now["last_event"] < now["projector_position"]
    now["feed_done"] = int(done)
    return now


def wait_for(engine: Engine, done: Any, *, timeout: float, what: str,
             poll: float = 0.25, kafka: bool = False) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        now = counts(engine, kafka)
        if done(now):
            return now
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f}s: {now}")
        time.sleep(poll)


def spends_settled(now: dict[str, int]) -> bool:
    """Every approval spent on chain (or undone), and the sagas caught up with the log."""
    return (now["approved"] > 0 and now["spent"] + now["reversed"] >= now["approved"]
            and bool(now["feed_done"]))


def quiet(now: dict[str, int]) -> bool:
    """Nothing left to send, and the listener has seen what was sent."""
    return (now["pending_effects"] == 0 and bool(now["feed_done"])
            and now["refunds_seen"] >= now["refunds_sent"]
            and now["spends_seen"] >= now["spends_sent"])


# -- one run, and what it is checked against ---------------------------------------------------------
@dataclass
class Totals:
    payments: int = 0
    spent: int = 0
    refunded: int = 0

    @property
    def net(self) -> int:
        return self.spent - self.refunded

    def as_json(self) -> dict[str, Any]:
        return {"payments": self.payments, "spent": str(self.spent),
                "refunded": str(self.refunded), "net": str(self.net)}


def chain_totals(chain: LocalChain, deployment: LocalDeployment,
                 to_block: int) -> dict[str, Totals]:
    """Per token, straight from the node's logs with eth-abi (independent of the listener's
    code): every Spend of the spender module, every transfer out of the settlement account."""
    from eth_abi.abi import decode as abi_decode

    from listener.decode import SPEND_TOPIC, TRANSFER_TOPIC

    # a Spend names the address it was spent through (EURe: the v1 frontend, as on mainnet)
    by_address = {a.lower(): t.symbol for t in deployment.tokens.values() for a in t.addresses}
    totals = {symbol: Totals() for symbol in deployment.tokens}
    span = {"fromBlock": deployment.deployed_at_block, "toBlock": to_block}
    for entry in chain.w3.eth.get_logs(
        {**span, "address": deployment.spender_module, "topics": [SPEND_TOPIC]}  # type: ignore[typeddict-item]
    ):
        asset, _account, _receiver, amount = abi_decode(
            ["address", "address", "address", "uint256"], bytes(entry["data"]))
        t = totals[by_address[asset.lower()]]
        t.payments += 1
        t.spent += int(amount)
    settlement_topic = "0x" + deployment.settlement_account.lower()[2:].rjust(64, "0")
    for entry in chain.w3.eth.get_logs(
        {**span, "address": list(deployment.token_addresses.values()),  # type: ignore[typeddict-item]
         "topics": [TRANSFER_TOPIC, settlement_topic]}
    ):
        (value,) = abi_decode(["uint256"], bytes(entry["data"]))
        totals[by_address[entry["address"].lower()]].refunded += int(value)
    return totals


def read_model_totals(engine: Engine) -> dict[str, Totals]:
    """Per token, the payments read model (what the projector made of the event feed)."""
    totals: dict[str, Totals] = {}
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT currency, count(*) FILTER (WHERE spent > 0), coalesce(sum(spent), 0),"
            " coalesce(sum(refunded), 0) FROM rm_payments WHERE currency IS NOT NULL"
            " GROUP BY currency"))
        for currency, count, spent, refunded in rows:
            totals[currency] = Totals(int(count), int(spent), int(refunded))
    return totals


def network_totals(engine: Engine) -> dict[str, dict[str, int]]:
    """Per token, what the network side of our own events says, in token units: approved,
    cleared (clearings, force posts, financial authorizations) and returned, and the same for
    the payments that have a spend on chain (what the chain must equal)."""
    query = text("""
        WITH p AS (
          SELECT stream_id,
            bool_or(type = 'PaymentSpent') AS on_chain,
            max(data->'payload'->'amount'->>'currency') FILTER (WHERE type = 'PaymentSpent')
              AS spent_in,
            max(data->'payload'->'amount'->>'currency') AS currency,
            coalesce(sum((data->'payload'->'amount'->>'units')::numeric)
              FILTER (WHERE type = 'PaymentAuthorized'), 0)
            + coalesce(sum((data->'payload'->'held'->>'units')::numeric)
              FILTER (WHERE type = 'AuthorizationAdvised'
                      AND (data->'payload'->>'approved')::boolean
                      AND version = 1), 0) AS approved,
            coalesce(sum((data->'payload'->'amount'->>'units')::numeric) FILTER (WHERE type IN
              ('ClearingRecorded', 'PaymentForcePosted', 'FinancialAuthorizationRecorded')), 0)
              AS cleared,
            coalesce(sum((data->'payload'->'amount'->>'units')::numeric)
              FILTER (WHERE type = 'ReturnRecorded'), 0)
            - coalesce(sum((data->'payload'->'amount'->>'units')::numeric)
              FILTER (WHERE type = 'ReturnReversed'), 0) AS returned
          FROM events GROUP BY stream_id)
        SELECT coalesce(spent_in, currency) AS currency, sum(approved), sum(cleared),
               sum(returned),
               sum(cleared) FILTER (WHERE on_chain), sum(returned) FILTER (WHERE on_chain)
        FROM p WHERE coalesce(spent_in, currency) IS NOT NULL GROUP BY 1""")
    out: dict[str, dict[str, int]] = {}
    with engine.connect() as conn:
        for currency, approved, cleared, returned, cleared_oc, returned_oc in conn.execute(query):
            out[currency] = {"approved": int(approved or 0), "cleared": int(cleared or 0),
                             "returned": int(returned or 0),
                             "cleared_on_chain": int(cleared_oc or 0),
                             "returned_on_chain": int(returned_oc or 0)}
    return out


@dataclass
class Currencies:
    """One run's figures per token: the chain, the read model, the network side of our events,
    the settlement batch and the network's report, the ledger."""

    chain: dict[str, Totals]
    read_model: dict[str, Totals]
    network: dict[str, dict[str, int]]
    settlement: dict[str, dict[str, Any]]
    ledger: dict[str, dict[str, int]]
    owed: dict[str, int]
    """What the open exceptions say the Safes still owe (over-clearings not collected)."""


@dataclass
class LifecycleResult:
    payments: int
    seed: int
    decimals: dict[str, int]
    figures: Currencies
    simulator_ok: bool
    simulator_problems: list[str]
    exceptions: dict[str, int]
    errors: list[str]
    seconds: float
    mismatches: list[str] = field(default_factory=list)
    expected: dict[str, Any] = field(default_factory=dict)
    """The simulator's oracle: per payment id, its network side in fiat minor units."""
    breaks: list[str] = field(default_factory=list)
    """What `cardpay reconcile` finds on each settlement day of the run (one line per break)."""

    @property
    def ok(self) -> bool:
        return not self.mismatches


def settlement_figures(engine: Engine, settings: Settings) -> dict[str, dict[str, Any]]:
    """Per fiat currency: the batches' status, our figures and the report's, summed over days."""
    from cardpay.postgres.uow import saga_uow_factory

    out: dict[str, dict[str, Any]] = {}
    with saga_uow_factory(engine, settings.outbox_topic)() as uow:
        for batch in uow.settlement_batches.find():
            row = out.setdefault(batch.currency, {"batches": 0, "settled": 0, "net": 0,
                                                  "report_net": 0, "statuses": []})
            row["batches"] += 1
            row["statuses"].append(batch.status.value)
            row["net"] += batch.ours.net
            if batch.report is not None:
                row["report_net"] += batch.report.interchange.net
            if batch.status.value == "settled":
                row["settled"] += batch.ours.net
    return out


def ledger_figures(engine: Engine, settings: Settings,
                   tokens: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per token: network payable (owed to the network; zero once every batch is paid out) and
    the holds still pending on it."""
    from domain.ledger.chart import AccountKind, ChartOfAccounts

    out: dict[str, dict[str, int]] = {}
    with unit_of_work(settings, engine)() as uow:
        for symbol in tokens:
            chart = ChartOfAccounts(symbol)
            found = uow.ledger.lookup_accounts([chart.account_id(AccountKind.NETWORK_PAYABLE)])
            if not found:
                continue
            payable = found[0]
            out[symbol] = {"network_payable": payable.credits_posted - payable.debits_posted,
                           "pending_holds": payable.credits_pending}
    return out


def exception_counts(engine: Engine) -> tuple[dict[str, int], dict[str, int]]:
    """Open exceptions (and quarantined records) by source:reason, and per token what the open
    over-clearing exceptions of payments spent on chain say their Safes owe (the payments the
    chain is compared on)."""
    counts_: dict[str, int] = {}
    owed: dict[str, int] = {}
    with engine.connect() as conn:
        for source, reason, n in conn.execute(text(
                "SELECT source, reason, count(*) FROM quarantine WHERE resolved_at IS NULL "
                "GROUP BY 1, 2 ORDER BY 1, 2")):
            counts_[f"{source}:{reason}"[:120]] = int(n)
        for currency, amount in conn.execute(text(
                "SELECT i.state->'data'->>'currency', sum((q.payload->>'owed')::numeric)"
                " FROM quarantine q JOIN saga_instances i ON i.kind = 'card_payment'"
                "  AND i.saga_id = q.payload->>'saga_id'"
                " WHERE q.source = 'saga:card_payment' AND q.resolved_at IS NULL"
                "  AND q.payload ? 'owed' AND EXISTS (SELECT 1 FROM events"
                "   WHERE stream_id = i.saga_id AND type = 'PaymentSpent') GROUP BY 1")):
            owed[str(currency)] = int(amount)
    return counts_, owed


def figures_now(s: LifecycleStack) -> tuple[Currencies, dict[str, int]]:
    """Every party's figures read now (the chain up to its head), and the open exceptions by
    source:reason: what `check` compares once a run has come to rest."""
    head = int(s.chain.w3.eth.block_number)
    figures = Currencies(
        chain=chain_totals(s.chain, s.deployment, head), read_model=read_model_totals(s.engine),
        network=network_totals(s.engine), settlement=settlement_figures(s.engine, s.settings),
        ledger=ledger_figures(s.engine, s.settings, sorted(s.deployment.tokens)), owed={})
    exceptions, figures.owed = exception_counts(s.engine)
    return figures, exceptions


def run_lifecycle(s: LifecycleStack, payments: int, seed: int, *, duplicates: float = 0.1,
                  reorder: float = 0.2, say: Any = None, timeout: float = 600.0,
                  attempts: int = 5) -> LifecycleResult:
    """The simulator's seeded workload through the API; every approval spent on chain before
    the network's later messages; then quiet; then the saga clock at the settlement cut-off of
    today's batches; then quiet again. Returns the figures, checked (`mismatches`). The
    simulator sends a message up to `attempts` times while the API does not answer."""
    import httpx

    from cardpay.devstack.network_simulator import HttpSender, simulate
    from domain.settlement import cutoff_at

    tell = say or (lambda message: None)
    kafka = s.settings.kafka_bootstrap is not None
    started = time.monotonic()
    today = datetime.now(UTC).date()

    def chain_side() -> None:
        tell("waiting for the approved spends to be mined and seen at depth")
        wait_for(s.engine, spends_settled, timeout=timeout, what="the approved spends",
                 kafka=kafka)

    async def main() -> Any:
        stop = asyncio.Event()
        services = asyncio.create_task(run_services(s, stop))
        try:
            with httpx.Client(timeout=30) as client:
                tell(f"sending {payments} payments' network messages to {s.api_url}")
                run = await asyncio.to_thread(
                    simulate, s.cards, payments=payments, seed=seed,
                    sender=HttpSender(client, s.api_url, s.secret, attempts=attempts),
                    day=today - timedelta(days=1), duplicates=duplicates,
                    reorder_fraction=reorder, after_authorizations=chain_side)
            tell("waiting for the sagas, the relayer, the refund sender and the listener")
            await asyncio.to_thread(wait_for, s.engine, quiet, timeout=timeout,
                                    what="the lifecycle's end", kafka=kafka)
            cutoff = s.settings.settlement_cutoff
            s.clock.offset = cutoff_at(today, cutoff) - datetime.now(UTC) + timedelta(minutes=1)
            tell(f"moving the sagas' clock to the settlement cut-off ({cutoff_at(today, cutoff)})")
            await asyncio.to_thread(wait_for, s.engine, settled, timeout=timeout,
                                    what="the settlement", kafka=kafka)
            return run
        finally:
            stop.set()
            await services

    run = asyncio.run(main())
    figures, exceptions = figures_now(s)
    problems = [f"{m.get('authorization_id')}: expected {m.get('expected')}, got "
                f"{m.get('status')} {m.get('answer')}" for m in run.mismatches]
    problems += payment_differences(s, run.expected.get("payments", {}))
    result = LifecycleResult(
        payments, seed, {sym: t.decimals for sym, t in s.deployment.tokens.items()}, figures,
        run.ok, problems, exceptions, list(s.errors), time.monotonic() - started)
    result.expected = run.expected.get("payments", {})
    result.breaks = reconciliation_breaks(s.engine)
    result.mismatches = check(result)
    return result


NETWORK_FIELDS = ("status", "authorized", "held", "posted", "cleared", "reversed", "released",
                  "over_cleared", "returned")


def network_figures(n: NetworkState, unit: int) -> dict[str, Any]:
    """A payment's network side in the simulator oracle's terms (`NETWORK_FIELDS`; amounts in
    the network's minor units, `unit` token base units each)."""
    return {"status": n.status.value, "authorized": n.authorized_units // unit,
            "held": n.held_units // unit, "posted": n.posted_units // unit,
            "cleared": n.cleared_units // unit, "reversed": n.reversed_units // unit,
            "released": n.released_units // unit, "over_cleared": n.over_cleared_units // unit,
            "returned": n.returned_units // unit}


def payment_differences(s: LifecycleStack, expected: dict[str, Any]) -> list[str]:
    """Each payment's network side as cardpay recorded it against what the simulator expects
    (its oracle moved every payment message by message), one line per payment that differs."""
    from domain.money import FIAT_TOKENS, fiat_currency
    from domain.payment import Payment

    out: list[str] = []
    with unit_of_work(s.settings, s.engine)() as uow:
        for payment_id, want in sorted(expected.items()):
            fiat = fiat_currency(want["currency"])
            unit = 10 ** (FIAT_TOKENS[fiat].decimals - fiat.decimals)
            got = network_figures(
                Payment.rehydrate(payment_id, uow.events.load(payment_id)).network, unit)
            wanted = {k: want[k] for k in NETWORK_FIELDS}
            if got != wanted:
                out.append(f"payment {payment_id}: network side {got}, the simulator expects "
                           f"{wanted}")
    return out


def settled(now: dict[str, int]) -> bool:
    return quiet(now) and now["open_batches"] == 0


def check(result: LifecycleResult) -> list[str]:
    """Every difference between the parties' figures, one line each (empty: all agree)."""
    f = result.figures
    out = [f"service failed: {e}" for e in result.errors]
    out += [f"simulator: {p}" for p in result.simulator_problems]
    for symbol in sorted(result.decimals):
        chain = f.chain.get(symbol, Totals())
        model = f.read_model.get(symbol, Totals())
        if (chain.spent, chain.refunded) != (model.spent, model.refunded):
            out.append(f"{symbol}: chain spent/refunded {chain.spent}/{chain.refunded}, read "
                       f"model {model.spent}/{model.refunded}")
        net = f.network.get(symbol)
        if net is not None:
            expected = net["cleared_on_chain"] - net["returned_on_chain"] - f.owed.get(symbol, 0)
            if chain.net != expected:
                out.append(f"{symbol}: the chain's net {chain.net} differs from what the network "
                           f"cleared net of returns for the payments spent on chain, less what "
                           f"exceptions say is owed ({expected})")
        ledger = f.ledger.get(symbol)
        if ledger is not None and ledger["pending_holds"] != 0:
            out.append(f"{symbol}: {ledger['pending_holds']} still held in the ledger")
        if ledger is not None and ledger["network_payable"] != 0:
            out.append(f"{symbol}: {ledger['network_payable']} still owed to the network "
                       "after the settlement")
    for fiat, row in sorted(f.settlement.items()):
        if row["net"] != row["report_net"] or set(row["statuses"]) != {"settled"}:
            out.append(f"{fiat}: settlement batches {row['statuses']} net {row['net']}, the "
                       f"network's report {row['report_net']}")
    out += [f"reconciliation: {b}" for b in result.breaks]
    return out


def reconciliation_breaks(engine: Engine) -> list[str]:
    """`cardpay reconcile` on every settlement day the run made: one line per break."""
    from cardpay.postgres.finance import PostgresFinanceReads

    reads = PostgresFinanceReads(engine)
    days = sorted({b.day for b in reads.settlements(day=None, currency=None)})
    return [f"{r.day} {r.currency}: {b.kind.value} {b.amount} ({', '.join(b.payments[:5])}): "
            f"{b.detail}" for day in days for r in reads.reconcile(day, None) for b in r.breaks]
