"""Full card-payment lifecycles per second: cardpay's saga engine against the same four steps as a
DBOS Transact workflow, in one run, on one PostgreSQL server and one Anvil node.

    python -m benchmarks.lifecycle [--seconds 60] [--concurrency 300] [--cardholders 100]

One `lifecycle_stack` (cardpay/bootstrap/lifecycle.py) is started: embedded PostgreSQL, Anvil
(1 s blocks), the Gnosis Pay replicas, `--cardholders` Safes with one card each (EURe on even
Safes, USDCe on odd ones), `cardpay api` on a uvicorn thread. Then two phases, one after the
other, each `--seconds` long, driven by the same CLOSED-LOOP driver: `--concurrency` clients,
each doing one lifecycle at a time of a 1.00 payment on its own card (client i uses card
i mod cards), starting the next as soon as its last one is cleared, until the phase's time is up
(lifecycles in flight then are finished and counted; the phase's clock runs until they are
settled):

- cardpay: the listener, the saga worker (spend relayer, refund sender, settlement desk) and the
  projector run (`run_services`). A lifecycle is: the signed authorization POSTed to the API
  (approved: the hold, `PaymentAuthorized`) -> the card-payment saga asks the relayer for the
  spend, which sends it to Anvil -> the listener sees the Spend at depth (`PaymentSpent`, read
  from the event store by one poller for all clients) -> the signed final clearing POSTed to
  the API. After the phase, the network's settlement report per currency is POSTed and the
  sagas' clock (only theirs) is moved to today's cut-off: the settlement saga matches the
  batches against the reports and posts the payouts; the phase ends when every batch is
  settled and nothing is pending.
- DBOS: our services are stopped. A lifecycle is one async `@DBOS.workflow`: `authorize` (a
  step: the same signed POST to the same API, so the same decision code), `spend` (a step:
  `SpenderModule.spend` sent with eth_sendTransaction from the relayer account, its gas
  estimated with our relayer's 1.25 margin, the nonce counted in the process like our
  relayer's — Anvil signs), `confirm` (a step: the receipt's Spend log at depth, against a head
  one shared task polls every 0.2 s like our listener), `clear` (a step: the same signed
  clearing POSTed to the same API, so the same booking code as our side's), `record_clearing`
  (a datasource transaction: the clearing row in the DBOS side's own table). After the phase,
  one `settle` workflow (a datasource transaction) matches per currency the cleared rows
  against the same reports and marks them settled (no ledger payout: DBOS's side has none).

Printed: the machine, both phases' lifecycles/s (settled lifecycles over the phase's whole
clock, settlement included), the rate of cleared lifecycles during the timed window, the lag
from a payment's clearing to its settled ledger (p50/p99: the batch closes at the cut-off, so
this is mostly the rest of the phase), the median of each stage, the API requests resent
(503s), the CPU of this process, Anvil and PostgreSQL, and the ratio.

Deployment: `lifecycle_stack` deploys the replicas under Anvil's automine, then switches the node
to 1 s blocks before any payment.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from benchmarks.authorization_load import percentile
from benchmarks.machine import describe
from cardpay.bootstrap.lifecycle import (
    CONFIRMATIONS,
    LifecycleStack,
    counts,
    lifecycle_stack,
    run_services,
)
from cardpay.devstack.network_oracle import SimCard
from cardpay.devstack.network_simulator import HttpSender
from cardpay.devstack.network_workload import AUTHORIZATIONS, EVENTS, Message, Workload, message
from cardpay.settings import Settings
from domain.settlement import cutoff_at

AMOUNT = 100
"""Minor units per payment (1.00 EUR / USD): a 60 s run at 300/s spends 180 per card of 100."""
MERCHANT = {"name": "Edeka Mitte", "id": "mer_grocery_01", "country": "DE", "mcc": "5411"}
POLL_S = 0.2
BLOCK_TIME_S = 1
log = logging.getLogger("benchmarks.lifecycle")


def safe_of(card: SimCard) -> tuple[str, int]:
    """The token and Safe index of a card of `lifecycle_stack` (its id is `<token>-<index>`)."""
    token, index = card.card_id.rsplit("-", 1)
    return {"eure": "EURe", "usdce": "USDCe"}[token], int(index)


def wire(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Payment:
    auth_id: str
    card: SimCard
    card_index: int
    started: float
    cleared: float | None = None
    settled: float | None = None
    authorized: float | None = None
    on_chain: float | None = None
    """When the approval came back and when the spend was known at depth."""


@dataclass
class Phase:
    name: str
    payments: list[Payment] = field(default_factory=list)
    declined: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    t0: float = 0.0
    window_end: float = 0.0
    drained: float = 0.0
    settled_at: float = 0.0
    settle_seconds: float = 0.0
    retries: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds used during the phase: this process, PostgreSQL, Anvil."""

    def fail(self, why: str) -> None:
        self.failed[why[:80]] = self.failed.get(why[:80], 0) + 1

    def summary(self) -> dict[str, Any]:
        done = [p for p in self.payments if p.settled is not None]
        in_window = [p for p in self.payments if p.cleared is not None
                     and p.cleared <= self.window_end]
        lags = [p.settled - p.cleared for p in done if p.cleared is not None
                and p.settled is not None]
        total = self.settled_at - self.t0
        window = self.window_end - self.t0
        lifecycle = [p.cleared - p.started for p in self.payments if p.cleared is not None]
        return {
            "phase": self.name, "started": len(self.payments), "settled": len(done),
            "declined": self.declined, "failed": self.failed,
            "seconds_total": round(total, 1), "seconds_window": round(window, 1),
            "lifecycles_per_s": round(len(done) / total, 2) if total > 0 else 0.0,
            "cleared_per_s_in_window": round(len(in_window) / window, 2) if window > 0 else 0.0,
            "auth_to_cleared_p50_s": round(percentile(lifecycle, 50), 2) if lifecycle else None,
            "auth_to_cleared_p99_s": round(percentile(lifecycle, 99), 2) if lifecycle else None,
            "stages_p50_s": stages(self.payments),
            "clearing_to_settled_p50_s": round(percentile(lags, 50), 2) if lags else None,
            "clearing_to_settled_p99_s": round(percentile(lags, 99), 2) if lags else None,
            "settlement_step_s": round(self.settle_seconds, 2), "api_retries": self.retries,
            "cpu_s": {k: round(v, 1) for k, v in self.cpu.items()},
            "cpu_ms_per_lifecycle": {k: round(1000 * v / len(done), 1) if done else None
                                     for k, v in self.cpu.items()},
            "cores_busy": {k: round(v / total, 2) if total > 0 else None
                           for k, v in self.cpu.items()}}


def cpu_seconds(pgdata: Path) -> dict[str, float]:
    """CPU (user + system) so far of this process, of the embedded PostgreSQL server (the
    postmaster in `pgdata`, which runs detached, and its backends) and of Anvil (a child)."""
    import psutil

    def used(proc: psutil.Process) -> float:
        try:
            return float(sum(proc.cpu_times()[:2]))
        except psutil.Error:
            return 0.0

    me = psutil.Process()
    out = {"python (API, services, driver, DBOS)": used(me), "postgres": 0.0, "anvil": 0.0,
           "api process": 0.0}
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "anvil" in child.name():
                out["anvil"] += used(child)
            elif "api" in child.cmdline() and "cardpay.cli.main" in child.cmdline():
                out["api process"] += used(child)
    with contextlib.suppress(OSError, ValueError, psutil.Error):
        master = psutil.Process(int((pgdata / "postmaster.pid").read_text().split()[0]))
        out["postgres"] = used(master) + sum(used(c) for c in master.children(recursive=True))
    return out


async def measured(phase_run: Awaitable[Phase], pgdata: Path) -> Phase:
    """The phase, with the CPU it used (a backend that exited during it is not counted)."""
    before = cpu_seconds(pgdata)
    phase = await phase_run
    after = cpu_seconds(pgdata)
    phase.cpu = {k: after[k] - before[k] for k in before}
    return phase


def stages(payments: list[Payment]) -> dict[str, float | None]:
    """Median seconds of each stage of the cleared lifecycles: where the time goes."""
    done = [p for p in payments if p.cleared is not None and p.authorized is not None
            and p.on_chain is not None]

    def median(values: list[float]) -> float | None:
        return round(percentile(values, 50), 2) if values else None

    return {"authorize": median([p.authorized - p.started for p in done  # type: ignore[operator]
                                 ]),
            "spend_to_depth": median([p.on_chain - p.authorized for p in done  # type: ignore[operator]
                                      ]),
            "clear": median([p.cleared - p.on_chain for p in done])}  # type: ignore[operator]


# -- the network side, shared by both phases ---------------------------------------------------------
class Network:
    """Signs and posts the network's messages to the API (the simulator's HttpSender signing)."""

    def __init__(self, stack: LifecycleStack, client: httpx.AsyncClient, prefix: str) -> None:
        self._signer = HttpSender(httpx.Client(), stack.api_url, stack.secret)
        self._client, self._api = client, stack.api_url
        self.prefix = prefix
        self._n = 0
        self.retries: dict[str, int] = {}
        """Requests sent again, by why (503: the API's admission control or deadline)."""

    def next_id(self) -> str:
        self._n += 1
        return f"{self.prefix}-{self._n:07d}"

    async def post(self, m: Message) -> Any:
        for attempt in range(5):
            headers = self._signer.headers(m, int(time.time()))
            try:
                reply = await self._client.post(self._api + m.path, content=m.body,
                                                headers=headers)
            except httpx.TransportError as exc:
                self.retries[type(exc).__name__] = self.retries.get(type(exc).__name__, 0) + 1
                await asyncio.sleep(0.1 * 2 ** attempt)
                continue
            if reply.status_code >= 500:
                why = f"{m.type} {reply.status_code}"
                self.retries[why] = self.retries.get(why, 0) + 1
                await asyncio.sleep(0.1 * 2 ** attempt)
                continue
            if reply.status_code != 200:
                raise RuntimeError(f"{m.type}: HTTP {reply.status_code} {reply.text[:200]}")
            return reply.json()
        raise RuntimeError(f"{m.type}: no answer after 5 attempts")

    async def authorize(self, auth_id: str, card: SimCard) -> bool:
        now = datetime.now(UTC)
        payload = {"authorization_id": auth_id, "card_id": card.card_id, "amount": AMOUNT,
                   "currency": card.currency.code, "merchant": MERCHANT,
                   "network_time": wire(now), "partial_approval_supported": False}
        answer = await self.post(message(AUTHORIZATIONS, auth_id, payload, now, auth_id))
        return bool(answer.get("approved")) and int(answer.get("approved_amount") or 0) == AMOUNT

    def clearing(self, auth_id: str, card: SimCard) -> Message:
        now = datetime.now(UTC)
        payload = {"type": "clearing", "clearing_id": f"clr-{auth_id}",
                   "authorization_id": auth_id, "card_id": card.card_id, "amount": AMOUNT,
                   "currency": card.currency.code, "final": True, "network_time": wire(now)}
        return message(EVENTS, auth_id, payload, now, f"{auth_id}-clearing")


def reports(stack: LifecycleStack, clearings: list[Message]) -> list[Message]:
    """The network's settlement report per currency for today's clearings (the simulator's
    builder: interchange, reimbursement fees, total)."""
    today = datetime.now(UTC).date()
    workload = Workload(stack.cards, secrets.randbelow(10**6), today - timedelta(days=1), 1)
    return workload.settlement_reports(clearings)


async def closed_loop(phase: Phase, cards: list[SimCard], concurrency: int, seconds: float,
                      one: Callable[[Payment], Awaitable[bool]], prefix: str) -> None:
    """`concurrency` clients, each one lifecycle at a time on its card until `seconds` pass."""
    phase.t0 = time.monotonic()
    deadline = phase.t0 + seconds
    counter = 0

    async def client(i: int) -> None:
        nonlocal counter
        index = i % len(cards)
        while time.monotonic() < deadline:
            counter += 1
            p = Payment(f"{prefix}-{counter:07d}", cards[index], index, time.monotonic())
            phase.payments.append(p)
            try:
                if not await one(p):
                    phase.declined += 1
                    await asyncio.sleep(1.0)
            except Exception as exc:  # counted and printed: a failed lifecycle is not done
                phase.fail(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.5)

    await asyncio.gather(*(client(i) for i in range(concurrency)))
    phase.window_end = deadline
    phase.drained = time.monotonic()


# -- cardpay -------------------------------------------------------------------------------------------
async def run_cardpay(stack: LifecycleStack, concurrency: int, seconds: float) -> Phase:
    phase = Phase("cardpay saga engine")
    stop = asyncio.Event()
    services = asyncio.create_task(run_services(stack, stop))
    waiting: dict[str, asyncio.Future[None]] = {}
    clearings: list[Message] = []

    async def spent_poller() -> None:
        """One reader of `PaymentSpent` for every client (the listener appends it at depth)."""
        last = await asyncio.to_thread(_last_position, stack)
        while not stop.is_set():
            rows = await asyncio.to_thread(_spent_since, stack, last)
            for position, stream in rows:
                last = max(last, position)
                fut = waiting.pop(stream, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
            await asyncio.sleep(POLL_S)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        network = Network(stack, client, "cp")
        poller = asyncio.create_task(spent_poller())

        async def one(p: Payment) -> bool:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            waiting[p.auth_id] = fut
            if not await network.authorize(p.auth_id, p.card):
                waiting.pop(p.auth_id, None)
                return False
            p.authorized = time.monotonic()
            await asyncio.wait_for(fut, timeout=120)
            p.on_chain = time.monotonic()
            clearing = network.clearing(p.auth_id, p.card)
            await network.post(clearing)
            clearings.append(clearing)
            p.cleared = time.monotonic()
            return True

        try:
            await closed_loop(phase, stack.cards, concurrency, seconds, one, "cp")
            for m in reports(stack, clearings):
                await network.post(m)
            today = datetime.now(UTC).date()
            cutoff = cutoff_at(today, stack.settings.settlement_cutoff)
            t_cut = time.monotonic()
            stack.clock.offset = cutoff - datetime.now(UTC) + timedelta(minutes=1)
            while True:
                now = await asyncio.to_thread(counts, stack.engine)
                if (now["open_batches"] == 0 and now["pending_effects"] == 0
                        and now["saga_position"] > now["last_event"]
                        and await asyncio.to_thread(_batches_settled, stack)):
                    break
                if stack.errors:
                    raise RuntimeError(f"a service failed: {stack.errors}")
                if time.monotonic() - t_cut > 300:
                    raise TimeoutError(f"the settlement did not finish: {now}")
                await asyncio.sleep(0.1)
            phase.settled_at = time.monotonic()
            phase.settle_seconds = phase.settled_at - t_cut
            phase.retries = network.retries
            for p in phase.payments:
                if p.cleared is not None:
                    p.settled = phase.settled_at
        finally:
            stop.set()
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            await services
    return phase


def _last_position(stack: LifecycleStack) -> int:
    with stack.engine.connect() as conn:
        return int(conn.execute(text("SELECT coalesce(max(position), 0) FROM events")).scalar_one())


def _spent_since(stack: LifecycleStack, last: int) -> list[tuple[int, str]]:
    with stack.engine.connect() as conn:
        return [(int(p), str(s)) for p, s in conn.execute(text(
            "SELECT position, stream_id FROM events WHERE position > :last"
            " AND type = 'PaymentSpent' ORDER BY position"), {"last": last})]


def _batches_settled(stack: LifecycleStack) -> bool:
    with stack.engine.connect() as conn:
        rows = conn.execute(text("SELECT status, count(*) FROM settlement_batches"
                                 " GROUP BY status")).all()
    return bool(rows) and all(status == "settled" for status, _ in rows)


# -- DBOS Transact ---------------------------------------------------------------------------------
DBOS_SETTINGS: dict[str, Any] = {
    "sys_db_pool_size": 40,
    "max_executor_threads": 64,
    "datasource_pool_size": 40,
    "use_listen_notify": True,
}
"""Async workflows on the caller's event loop (no thread per workflow), started directly (no
queue: the closed loop bounds the concurrency), the system database's pool at 40 connections
(DBOS's default is 20) and the datasource's at 40, the default serializer."""


async def run_dbos(stack: LifecycleStack, concurrency: int, seconds: float) -> Phase:
    from dbos import DBOS, AsyncSQLAlchemyDatasource, DBOSConfig

    phase = Phase("DBOS Transact")
    base = stack.engine.url
    admin = create_engine(base.render_as_string(hide_password=False),
                          isolation_level="AUTOCOMMIT")
    name = f"dbos_bench_{secrets.token_hex(3)}"
    with admin.connect() as sync_conn:
        sync_conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    url = base.set(database=name, drivername="postgresql+psycopg")
    url_text = url.render_as_string(hide_password=False)
    config: DBOSConfig = {"name": "lifecycle-bench", "system_database_url": url_text,
                          "sys_db_pool_size": DBOS_SETTINGS["sys_db_pool_size"],
                          "max_executor_threads": DBOS_SETTINGS["max_executor_threads"],
                          "use_listen_notify": DBOS_SETTINGS["use_listen_notify"],
                          "log_level": "WARNING"}
    DBOS(config=config)
    ds = await AsyncSQLAlchemyDatasource.create(
        url_text, engine_kwargs={"pool_size": DBOS_SETTINGS["datasource_pool_size"],
                                 "max_overflow": 0})
    async with ds.engine.begin() as conn:
        await conn.execute(text(
            "CREATE TABLE bench_payments (auth_id text PRIMARY KEY, card_id text NOT NULL,"
            " currency text NOT NULL, amount bigint NOT NULL, tx_hash text NOT NULL,"
            " block bigint NOT NULL, status text NOT NULL, cleared_at timestamptz NOT NULL,"
            " settled_at timestamptz)"))
        await conn.execute(text(
            "CREATE TABLE bench_batches (currency text PRIMARY KEY, count int NOT NULL,"
            " net bigint NOT NULL, report_net bigint NOT NULL, settled_at timestamptz NOT NULL)"))

    deployment = stack.deployment
    rpc = stack.chain.w3.provider.endpoint_uri  # type: ignore[attr-defined]
    spend_topic = "0x" + bytes(stack.chain.w3.keccak(
        text="Spend(address,address,address,uint256)")).hex()
    head = {"n": 0}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    client = httpx.AsyncClient(timeout=60, limits=limits)
    chain_client = httpx.AsyncClient(timeout=60, limits=limits)
    network = Network(stack, client, "db")
    new_block = asyncio.Event()
    nonce: list[int] = []
    nonce_lock = asyncio.Lock()

    async def rpc_call(method: str, params: list[Any]) -> Any:
        reply = await chain_client.post(rpc, json={"jsonrpc": "2.0", "id": 1, "method": method,
                                                   "params": params})
        body = reply.json()
        if "error" in body:
            raise RuntimeError(f"{method}: {body['error']}")
        return body["result"]

    async def head_poller() -> None:
        nonlocal new_block
        while True:
            n = int(await rpc_call("eth_blockNumber", []), 16)
            if n != head["n"]:
                head["n"] = n
                new_block.set()
                new_block = asyncio.Event()
            await asyncio.sleep(POLL_S)

    def decimals(symbol: str) -> int:
        return deployment.tokens[symbol].decimals

    marks: dict[str, Payment] = {}

    @DBOS.step()
    async def authorize(auth_id: str, card_index: int) -> bool:
        approved = await network.authorize(auth_id, stack.cards[card_index])
        marks[auth_id].authorized = time.monotonic()
        return approved

    @DBOS.step()
    async def spend(symbol: str, safe_index: int, units: int) -> str:
        tx = stack.chain.spend_request(symbol, safe_index, units)
        del tx["gas"]  # estimated, with our relayer's margin (1.25), as our relayer does
        tx["gas"] = hex(int(int(await rpc_call("eth_estimateGas", [tx]), 16) * 1.25))
        async with nonce_lock:  # Anvil's own nonce for concurrent sends races
            if not nonce:
                nonce.append(int(await rpc_call("eth_getTransactionCount",
                                                [tx["from"], "pending"]), 16))
            tx["nonce"] = hex(nonce[0])
            nonce[0] += 1
            return str(await rpc_call("eth_sendTransaction", [tx]))

    @DBOS.step()
    async def confirm(tx_hash: str) -> int:
        """The Spend log's block once it is CONFIRMATIONS deep."""
        block: int | None = None
        while True:
            waiter = new_block
            if block is None:
                receipt = await rpc_call("eth_getTransactionReceipt", [tx_hash])
                if receipt is not None:
                    if int(receipt["status"], 16) != 1:
                        raise RuntimeError(f"spend {tx_hash} reverted")
                    if not any(entry["topics"][0] == spend_topic for entry in receipt["logs"]):
                        raise RuntimeError(f"spend {tx_hash} has no Spend log")
                    block = int(receipt["blockNumber"], 16)
            if block is not None and block <= head["n"] - CONFIRMATIONS:
                return block
            await asyncio.wait_for(waiter.wait(), timeout=30)

    @DBOS.step()
    async def clear(auth_id: str, card_index: int) -> None:
        await network.post(network.clearing(auth_id, stack.cards[card_index]))

    @ds.transaction()
    async def record_clearing(auth_id: str, card_id: str, currency: str, tx_hash: str,
                              block: int) -> None:
        await ds.sql_session().execute(text(
            "INSERT INTO bench_payments (auth_id, card_id, currency, amount, tx_hash, block,"
            " status, cleared_at) VALUES (:a, :c, :cur, :amt, :tx, :b, 'cleared', now())"),
            {"a": auth_id, "c": card_id, "cur": currency, "amt": AMOUNT, "tx": tx_hash,
             "b": block})

    @DBOS.workflow()
    async def lifecycle(auth_id: str, card_index: int) -> bool:
        card = stack.cards[card_index]
        if not await authorize(auth_id, card_index):
            return False
        symbol, safe_index = safe_of(card)
        units = AMOUNT * 10 ** (decimals(symbol) - 2)
        tx_hash = await spend(symbol, safe_index, units)
        block = await confirm(tx_hash)
        marks[auth_id].on_chain = time.monotonic()
        await clear(auth_id, card_index)
        await record_clearing(auth_id, card.card_id, card.currency.code, tx_hash, block)
        return True

    @ds.transaction()
    async def settle_batches(report_nets: dict[str, int]) -> dict[str, int]:
        session = ds.sql_session()
        rows = (await session.execute(text(
            "SELECT currency, count(*), sum(amount) FROM bench_payments"
            " WHERE status = 'cleared' GROUP BY currency"))).all()
        out: dict[str, int] = {}
        for currency, n, total in rows:
            if -int(total) != report_nets.get(currency):
                raise RuntimeError(f"{currency}: ours {-int(total)}, report "
                                   f"{report_nets.get(currency)}")
            await session.execute(text(
                "INSERT INTO bench_batches VALUES (:c, :n, :net, :r, now())"),
                {"c": currency, "n": n, "net": -int(total), "r": report_nets[currency]})
            await session.execute(text(
                "UPDATE bench_payments SET status = 'settled', settled_at = now()"
                " WHERE status = 'cleared' AND currency = :c"), {"c": currency})
            out[currency] = int(n)
        return out

    @DBOS.workflow()
    async def settle(report_nets: dict[str, int]) -> dict[str, int]:
        return await settle_batches(report_nets)

    DBOS.launch()
    poller = asyncio.create_task(head_poller())
    clearings: list[Message] = []

    async def one(p: Payment) -> bool:
        marks[p.auth_id] = p
        handle = await DBOS.start_workflow_async(lifecycle, p.auth_id, p.card_index)
        if not await handle.get_result():
            return False
        clearings.append(network.clearing(p.auth_id, p.card))
        p.cleared = time.monotonic()
        return True

    try:
        await closed_loop(phase, stack.cards, concurrency, seconds, one, "db")
        t_cut = time.monotonic()
        nets: dict[str, int] = {}
        for m in reports(stack, clearings):
            interchange = next(line for line in m.payload["lines"]
                               if line["amount_type"] == "interchange")
            nets[m.payload["currency"]] = int(interchange["net_amount"])
        handle = await DBOS.start_workflow_async(settle, nets)
        settled = await handle.get_result()
        phase.settled_at = time.monotonic()
        phase.settle_seconds = phase.settled_at - t_cut
        phase.retries = network.retries
        if sum(settled.values()) != len(clearings):
            raise RuntimeError(f"settled {settled}, cleared {len(clearings)}")
        for p in phase.payments:
            if p.cleared is not None:
                p.settled = phase.settled_at
    finally:
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
        await client.aclose()
        await chain_client.aclose()
        DBOS.destroy()
    return phase


# -- the command ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--cardholders", type=int, default=100)
    parser.add_argument("--only", choices=("cardpay", "dbos"), default=None)
    parser.add_argument("--api-process", action="store_true",
                        help="send both phases' requests to `cardpay api` in a process of its "
                             "own (as users run it) instead of the stack's uvicorn thread")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    print(describe(), flush=True)
    print(f"load (1 min) at start: {os.getloadavg()[0]:.2f}", flush=True)
    print(f"settings: closed loop, {args.concurrency} clients, {args.seconds:.0f} s per phase, "
          f"{args.cardholders} cards, {AMOUNT} minor units per payment, Anvil 1 s blocks, "
          f"depth {CONFIRMATIONS}; DBOS: {json.dumps(DBOS_SETTINGS)}", flush=True)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as d, \
            lifecycle_stack(Settings(data_dir=Path(d)), cardholders=args.cardholders,
                            block_time=BLOCK_TIME_S) as stack:
        api = contextlib.ExitStack()
        if args.api_process:
            from benchmarks.authorization_load import api_process

            env = {**os.environ, "CARDPAY_DATABASE_URL":
                   stack.engine.url.render_as_string(hide_password=False),
                   "CARDPAY_WEBHOOK_SECRETS": stack.secret,
                   "CARDPAY_RPC_URL": str(stack.settings.rpc_url),
                   "CARDPAY_CONFIRMATIONS": str(CONFIRMATIONS),
                   "CARDPAY_NETWORK_ADVICE_URL": stack.recorder.url,
                   "CARDPAY_SWEEP_INTERVAL_S": "0"}
            stack.api_url, _ = api.enter_context(api_process(env, Path(d) / "api.log"))
            print(f"API: `cardpay api` in its own process at {stack.api_url}", flush=True)
        print(f"stack up: {len(stack.cards)} cards", flush=True)
        if args.only in (None, "cardpay"):
            results["cardpay"] = asyncio.run(
                measured(run_cardpay(stack, args.concurrency, args.seconds), Path(d) / "pgdata")).summary()
            print(json.dumps(results["cardpay"]), flush=True)
            print(f"load (1 min) after: {os.getloadavg()[0]:.2f}", flush=True)
        if args.only in (None, "dbos"):
            results["dbos"] = asyncio.run(
                measured(run_dbos(stack, args.concurrency, args.seconds), Path(d) / "pgdata")).summary()
            print(json.dumps(results["dbos"]), flush=True)
            print(f"load (1 min) after: {os.getloadavg()[0]:.2f}", flush=True)
        api.close()
    if len(results) == 2:
        ours, theirs = results["cardpay"], results["dbos"]
        ratio = ours["lifecycles_per_s"] / theirs["lifecycles_per_s"] \
            if theirs["lifecycles_per_s"] else float("inf")
        print(f"lifecycles/s: cardpay {ours['lifecycles_per_s']}, DBOS "
              f"{theirs['lifecycles_per_s']}, ratio cardpay / DBOS {ratio:.2f}x")


if __name__ == "__main__":
    main()
