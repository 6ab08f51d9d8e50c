"""Query latency of the finance read side through the API: a settlement day of N payments
(issue 9: "settlement and reconciliation queries for a day of 100,000 payments: p99 latency").

    python -m benchmarks.query_latency [--payments 100000] [--neighbour 10000] [--safes 1000]
                                       [--requests 200] [--warmup 10] [--clients 8]
                                       [--budget 180] [--page 100] [--seed 1]

One PostgreSQL (embedded, in a temp dir; or CARDPAY_DATABASE_URL, which must hold no events).

The workload (written first, not part of the result): settlement day D (yesterday, UTC: the day
finance asks about the morning after, whose chain events are "recorded" within the day either
side the reconciliation reads) with `--payments` payments and its neighbour D-1 with
`--neighbour`, so every filter has rows to skip. Payments start evenly over 00:00-18:00 of their
day on `--safes` Safes (even ones EUR cards spending EURe, odd ones USD cards spending USDCe);
paths: 4 % declined, 3 % reversed by the network after the spend (the saga's refund lands on
chain), 3 % still held at the end (spent, not cleared: in no batch), the rest cleared (final,
1-5 h after the authorization, on the same day) and settled. Written by the real write paths,
in bulk:

- the events: each payment's commands (those the card network's effects, the listener's sink
  and the sagas send: AuthorizePayment/DeclineAuthorization, ConfirmSpend, RecordClearing and
  ClearPayment, or ReverseAuthorization, ReversePayment, RecordRefundSubmission, ConfirmRefund)
  decided by the `Payment` aggregate and appended through the event store
  (`PostgresUnitOfWork.events.append`), interleaved in time order, 10,000 a transaction;
- the ledger: the card network's accounts and each Safe's (`ChartOfAccounts`), each Safe funded
  once by the mirror's `chain_balance` transfer (what `CardNetworkEffects._mirror` books on a
  first authorization), then every event's transfers as the handlers derive them
  (`PaymentPostings.apply`: holds, posts, voids; `domain.ledger.payments.chain_movements`: the
  `:onchain` spends and refunds) through `PostgresLedger.create_transfers`, one call per minute
  of the day at that minute (so each posting is dated as a live writer would date it); every
  transfer must apply;
- the settlement: the network's VSS-110 report of each day and currency (computed here from the
  clearings generated, the network's own side) recorded by `CardNetworkEffects.apply`; the real
  settlement saga (`SettlementSaga` through `SagaRunner.handle_batch`, fed the events in feed
  order, 2,000 a batch), its cut-off timers fired, and the `SettlementDesk` answering its
  effects (report, payout) until idle: settlement items, batches (settled) and SettlePayment on
  every payment of each batch, as in production;
- the read models: `cardpay project`'s loop (`run_projector(until_idle=True)`) builds
  rm_payments and rm_daily from the feed.

Checked before measuring (exit status 1 if any differs): `/v1/settlements?day=D` gives per
currency the count and debit generated, status settled and the report's figures equal to ours;
the CSV has the same rows; `/v1/reconciliation?day=D` is clean, names the day's payments and the
chain's spends and refunds and the ledger's payable equal the generated sums; walking every page
of `/v1/payments?day=D` finds each payment of D once and none of D-1.

Measured: `cardpay api` started as its own process (uvicorn, uvloop, httptools; one worker) with
a `finance:read` token; httpx clients on this process. Per query: `--warmup` requests, then
`--requests` from one client one after another, then `--requests` shared by `--clients`
concurrent clients (threads, one connection each). A cell stops early when it has run
`--budget` seconds (the requests done are shown). The queries: GET /v1/settlements?day=D (JSON),
the same with format=csv, GET /v1/reconciliation?day=D, GET /v1/payments?day=D&limit=`--page`
(the first page) and the same from a cursor half-way through the day (a deep page).

Printed: the machine, PostgreSQL's version and settings, the workload, one table of p50, p95,
p99, max (ms) and requests per second.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import heapq
import io
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as day_time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, text

from benchmarks.authorization_load import api_process, percentile
from benchmarks.machine import describe
from benchmarks.read_side import holds_events, server_facts, settings_for_run
from cardpay.bootstrap import database, payments_projector
from cardpay.bootstrap.project import run_projector
from cardpay.bootstrap.sagas import payment_command
from cardpay.handlers.card_network import CardNetworkEffects
from cardpay.handlers.sagas import SagaRunner
from cardpay.handlers.settlement import SettlementDesk
from cardpay.postgres.repositories.api_tokens import PostgresTokenStore
from cardpay.postgres.uow import PostgresUnitOfWork, saga_uow_factory
from domain import commands as c
from domain.card_network import authorization_expires_at
from domain.events import ChainEvidence, DomainEvent
from domain.ledger.chart import ChartOfAccounts
from domain.ledger.model import Transfer
from domain.ledger.payments import PaymentPostings, chain_movements
from domain.money import EUR, EURE, USD, USDCE, Currency, Money
from domain.network import AmountType, BusinessMode, SettlementLine, SettlementReport
from domain.payment import Payment, handle
from domain.settlement import cutoff_at
from sagas import settlement
from sagas.settlement import SettlementSaga

CHAIN_ID = 100
CARDS = ((EUR, EURE), (USD, USDCE))
"""Even Safes: EUR cards spending EURe (18 decimals); odd ones: USD cards spending USDCe (6)."""
MERCHANTS = (("Edeka Mitte", "5411"), ("Deutsche Bahn", "4112"), ("Cafe Einstein", "5814"),
             ("Amazon EU", "5999"), ("Sixt", "7512"))
FUNDING_CENTS = 10**9
"""What each Safe holds at the start (10,000,000.00 of its fiat, in its token)."""
CONSUMER = "qbench-settlement"


# -- the workload ---------------------------------------------------------------------------------
@dataclass
class Expected:
    """What was written for one settlement day, per fiat currency: what the API must show."""

    payments: set[str] = field(default_factory=set)
    """Every payment first seen on the day (declined ones too)."""
    batch_count: Counter[str] = field(default_factory=Counter)
    """Clearings counted by the network per currency."""
    batch_debit: Counter[str] = field(default_factory=Counter)
    """Their sum, fiat minor units."""
    spent: Counter[str] = field(default_factory=Counter)
    """Chain spends, token base units."""
    refunded: Counter[str] = field(default_factory=Counter)
    reconciled: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    """Per currency: the payments the reconciliation names (cleared, reversed, held)."""
    paths: Counter[str] = field(default_factory=Counter)


def _evidence(at: datetime, n: int, salt: int) -> ChainEvidence:
    block = int(at.timestamp()) // 5
    return ChainEvidence(chain_id=CHAIN_ID, block_number=block, block_hash=f"0x{block:064x}",
                         tx_hash=f"0x{n:056x}{salt:08x}", log_index=salt)


def safe_of(holder: int) -> str:
    return f"0x{holder + 1:040x}"


def payment(n: int, day: date, at: datetime, rng: random.Random, safes: int,
            expected: Expected) -> list[DomainEvent]:
    """One payment's events, decided by the aggregate from the commands the shell sends."""
    pid = f"qb-{day:%Y%m%d}-{n:07d}"
    holder = rng.randrange(safes)
    fiat, token = CARDS[holder % 2]
    account = safe_of(holder)
    merchant, mcc = rng.choice(MERCHANTS)
    cents = rng.randint(100, 50_000)
    amount = Money(cents * 10 ** (token.decimals - fiat.decimals), token)
    roll = rng.random()
    cmds: list[c.Command] = []
    expected.payments.add(pid)
    if roll < 0.04:
        expected.paths["declined"] += 1
        cmds.append(c.DeclineAuthorization(command_id=pid, payment_id=pid, at=at, account=account,
                                           amount=amount, merchant=merchant, mcc=mcc,
                                           reason="insufficient_funds"))
    else:
        cmds.append(c.AuthorizePayment(command_id=pid, payment_id=pid, at=at, account=account,
                                       amount=amount, requested=amount, merchant=merchant,
                                       mcc=mcc, expires_at=authorization_expires_at(at, mcc)))
        spent_at = at + timedelta(seconds=rng.randint(6, 30))
        cmds.append(c.ConfirmSpend(command_id=f"{pid}:spend", payment_id=pid, at=spent_at,
                                   account=account, amount=amount,
                                   evidence=_evidence(spent_at, n, 0)))
        expected.spent[fiat.code] += amount.units
        expected.reconciled[fiat.code].add(pid)
        if roll < 0.07:
            expected.paths["reversed, refunded on chain"] += 1
            gone = spent_at + timedelta(minutes=rng.randint(5, 300))
            cmds.append(c.ReverseAuthorization(command_id=f"{pid}:rev", payment_id=pid, at=gone,
                                               reason="network reversal"))
            cmds.append(c.ReversePayment(command_id=f"{pid}:saga:reverse", payment_id=pid,
                                         at=gone, reason="reversed"))
            refund_id = f"{pid}:saga:reverse:reversal"
            sent, seen = gone + timedelta(seconds=20), gone + timedelta(seconds=50)
            cmds.append(c.RecordRefundSubmission(command_id=f"{pid}:sub", payment_id=pid,
                                                 at=sent, refund_id=refund_id,
                                                 tx_hash=f"0x{n:056x}f{1:07x}"))
            cmds.append(c.ConfirmRefund(command_id=f"{pid}:ref", payment_id=pid, at=seen,
                                        refund_id=refund_id, amount=amount,
                                        evidence=_evidence(seen, n, 1)))
            expected.refunded[fiat.code] += amount.units
        elif roll < 0.10:
            expected.paths["held (not cleared yet)"] += 1
        else:
            expected.paths["cleared and settled"] += 1
            cleared_at = spent_at + timedelta(minutes=rng.randint(60, 300))
            cmds.append(c.RecordClearing(command_id=f"clr-{pid}", payment_id=pid, at=cleared_at,
                                         amount=amount, final=True))
            cmds.append(c.ClearPayment(command_id=f"{pid}:saga:clear", payment_id=pid,
                                       at=cleared_at, amount=amount))
            expected.batch_count[fiat.code] += 1
            expected.batch_debit[fiat.code] += cents
    aggregate = Payment(pid)
    for cmd in cmds:
        handle(aggregate, cmd)
    return aggregate.pending_events


def day_events(day: date, count: int, safes: int, rng: random.Random,
               expected: Expected) -> list[DomainEvent]:
    """A day's payments, started evenly over 00:00-18:00 (their clearings stay on the day)."""
    start = datetime.combine(day, day_time(0), UTC)
    spacing = 18 * 3600 / max(1, count)
    out: list[DomainEvent] = []
    for n in range(count):
        out += payment(n, day, start + timedelta(seconds=n * spacing), rng, safes, expected)
    return out


def in_time_order(days: list[list[DomainEvent]]) -> list[DomainEvent]:
    """The feed's order: by time (a payment's own events stay in version order)."""
    return list(heapq.merge(*(sorted(d, key=lambda ev: (ev.occurred_at, ev.stream_id,
                                                        ev.version)) for d in days),
                            key=lambda ev: (ev.occurred_at, ev.stream_id, ev.version)))


def write_events(engine: Engine, feed: list[DomainEvent], per_transaction: int = 10_000) -> None:
    for i in range(0, len(feed), per_transaction):
        with PostgresUnitOfWork(engine) as uow:
            uow.events.append(feed[i:i + per_transaction])
            uow.commit()


def write_ledger(engine: Engine, feed: list[DomainEvent], safes: int) -> int:
    """Accounts, each Safe's funding, then every event's transfers, a minute of the day per
    `create_transfers` call dated at that minute; the number of transfers. Raises if the ledger
    refuses one (the day would not be the one the handlers write)."""
    first = feed[0].occurred_at.replace(hour=0, minute=0, second=0, microsecond=0)
    with PostgresUnitOfWork(engine) as uow:
        for _, token in CARDS:
            chart = ChartOfAccounts(token.code)
            uow.ledger.create_accounts(chart.house_accounts())
        for holder in range(safes):
            fiat, token = CARDS[holder % 2]
            chart, safe = ChartOfAccounts(token.code), safe_of(holder)
            uow.ledger.create_accounts([chart.cardholder(safe), chart.safe_mirror(safe),
                                        chart.exposure(safe)])
        funding = []
        for holder in range(safes):
            fiat, token = CARDS[holder % 2]
            chart, safe = ChartOfAccounts(token.code), safe_of(holder)
            units = FUNDING_CENTS * 10 ** (token.decimals - fiat.decimals)
            funding.append(Transfer(f"mirror:qbench-funding:{safe}:{token.code}",
                                    chart.safe_mirror(safe).id, chart.cardholder(safe).id, units,
                                    chart.ledger, "chain_balance", user_data=safe))
        _apply(uow, funding, first)
        uow.commit()
    holds: dict[str, Any] = {}
    postings: dict[str, PaymentPostings] = {}
    safe_of_payment: dict[str, str] = {}
    written = 0
    minute: list[Transfer] = []
    at: datetime | None = None

    def flush() -> None:
        nonlocal written
        if minute and at is not None:
            with PostgresUnitOfWork(engine) as uow:
                _apply(uow, minute, at)
                uow.commit()
            written += len(minute)
            minute.clear()

    for ev in feed:
        bucket = ev.occurred_at.replace(second=0, microsecond=0) + timedelta(seconds=59)
        if at is not None and bucket != at:
            flush()
        at = bucket
        account = getattr(ev, "account", None)
        if ev.version == 1:
            if not account or type(ev).__name__ != "PaymentAuthorized":
                continue  # a decline moves nothing
            token = ev.amount.currency  # type: ignore[attr-defined]
            safe_of_payment[ev.stream_id] = account
            postings[ev.stream_id] = PaymentPostings(ChartOfAccounts(token.code), account)
        pp = postings.get(ev.stream_id)
        if pp is None:
            continue
        step = pp.apply(ev, holds.get(ev.stream_id))
        holds[ev.stream_id] = step.hold
        minute.extend(step.linked)
        minute.extend(step.direct)
        minute.extend(chain_movements(safe_of_payment[ev.stream_id], [], [ev]))
    flush()
    return written


def _apply(uow: PostgresUnitOfWork, transfers: list[Transfer], now: datetime) -> None:
    results = uow.ledger.create_transfers(transfers, now)
    refused = [(t.id, r) for t, r in zip(transfers, results, strict=True) if not r.applied]
    if refused:
        raise RuntimeError(f"the ledger refused {len(refused)} transfers, e.g. {refused[:3]}")


def report(day: date, fiat: Currency, count: int, debit: int) -> SettlementReport:
    """The network's VSS-110 summary of the day: interchange (purchases are debits), the issuer's
    reimbursement fees (0.2 %), the total."""
    def line(mode: BusinessMode, kind: AmountType, credit: int, debit: int) -> SettlementLine:
        return SettlementLine(business_mode=mode, amount_type=kind, count=count,
                              credit_amount=Money(credit, fiat), debit_amount=Money(debit, fiat),
                              net_amount=Money(credit - debit, fiat))
    fees = debit * 2 // 1000
    at = datetime.combine(day + timedelta(days=1), day_time(1), UTC)
    return SettlementReport(
        network_time=at, report_id=f"vss110-{day}-{fiat.code}", settlement_date=day,
        currency=fiat, funds_transfer_date=day + timedelta(days=1),
        lines=(line(BusinessMode.ISSUER, AmountType.INTERCHANGE, 0, debit),
               line(BusinessMode.ISSUER, AmountType.REIMBURSEMENT_FEES, fees, 0),
               line(BusinessMode.TOTAL, AmountType.TOTAL, fees, debit)))


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def settle(engine: Engine, feed: list[DomainEvent], expected: dict[date, Expected]) -> None:
    """The reports recorded; the settlement saga fed the feed; its cut-offs fired; the desk
    answers until nothing is left (batches matched, paid, their payments settled)."""
    last = max(expected)
    clock = Clock(feed[-1].occurred_at)
    effects = CardNetworkEffects(clock=clock)
    with PostgresUnitOfWork(engine) as uow:
        for day, exp in expected.items():
            for fiat, _ in CARDS:
                if exp.batch_count[fiat.code]:
                    effects.apply(uow, report(day, fiat, exp.batch_count[fiat.code],
                                              exp.batch_debit[fiat.code]))
        uow.commit()
    saga = SettlementSaga()
    runner = SagaRunner(saga_uow_factory(engine), [saga], settlement.route, payment_command,
                        clock)
    for i in range(0, len(feed), 2000):
        runner.handle_batch(CONSUMER, feed[i:i + 2000], {"0": i + 2000})
    desk = SettlementDesk(saga_uow_factory(engine), runner, clock)
    clock.now = cutoff_at(last + timedelta(days=1), saga.cutoff) + timedelta(minutes=1)
    while True:
        fired = runner.fire_due_timers()
        answered = 0
        while (done := desk.run_once()):
            answered += done
        if not fired.advanced and not answered:
            break


def project(engine: Engine, settings: Any) -> int:
    projector = payments_projector(settings, engine, batch_size=2000)
    asyncio.run(run_projector(projector, asyncio.Event(), until_idle=True, poll_timeout=0.05,
                              give_up_after=60))
    return projector.applied


# -- the API --------------------------------------------------------------------------------------
def api_env(url: str) -> dict[str, str]:
    """`cardpay api`'s environment: this database, a webhook secret of its own (required)."""
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    return {**{k: v for k, v in os.environ.items() if not k.startswith("CARDPAY_")},
            "CARDPAY_DATABASE_URL": url, "CARDPAY_WEBHOOK_SECRETS": secret}


def _get(client: httpx.Client, path: str, params: dict[str, Any]) -> httpx.Response:
    reply = client.get(path, params=params)
    if reply.status_code != 200:
        raise RuntimeError(f"GET {path} {params}: {reply.status_code} {reply.text[:300]}")
    return reply


# -- the checks -----------------------------------------------------------------------------------
def check(client: httpx.Client, day: date, exp: Expected, other: Expected, page: int
          ) -> tuple[list[str], str]:
    """What the API shows for `day` against what was written; (what differs, the cursor half-way
    through the day's payments, for the deep page)."""
    wrong: list[str] = []
    params = {"day": day.isoformat()}
    batches = _get(client, "/v1/settlements", params).json()["settlements"]
    got = {b["currency"]: b for b in batches}
    want = {f.code for f, _ in CARDS if exp.batch_count[f.code]}
    if set(got) != want:
        wrong.append(f"settlements: currencies {sorted(got)}, expected {sorted(want)}")
    for code in want & set(got):
        b = got[code]
        figures = (b["status"], b["count"], int(b["debit"]), int(b["credit"]))
        if figures != ("settled", exp.batch_count[code], exp.batch_debit[code], 0):
            wrong.append(f"settlement {code}: {figures}, expected settled, "
                         f"{exp.batch_count[code]}, {exp.batch_debit[code]}, 0")
        if (b["report_count"], b["report_debit"], b["diff_net"]) != (
                b["count"], b["debit"], "0"):
            wrong.append(f"settlement {code}: the report's figures differ from ours: {b}")
    rows = list(csv.DictReader(io.StringIO(
        _get(client, "/v1/settlements", {**params, "format": "csv"}).text)))
    if [(r["currency"], r["count"], r["debit"]) for r in rows] != [
            (b["currency"], str(b["count"]), b["debit"]) for b in batches]:
        wrong.append("settlements: the CSV differs from the JSON")
    recon = _get(client, "/v1/reconciliation", params).json()
    if not recon["clean"]:
        breaks = [b for r in recon["currencies"] for b in r["breaks"]]
        wrong.append(f"reconciliation: {len(breaks)} breaks, e.g. {breaks[:2]}")
    for r in recon["currencies"]:
        code = r["currency"]
        fiat, token = next((f, t) for f, t in CARDS if f.code == code)
        payable = exp.batch_debit[code] * 10 ** (token.decimals - fiat.decimals)
        seen = (len(r["payments"]), int(r["chain"]["spent"]), int(r["chain"]["refunded"]),
                int(r["ledger"]["onchain"]), int(r["ledger"]["payable"]))
        wanted = (len(exp.reconciled[code]), exp.spent[code], exp.refunded[code],
                  exp.spent[code] - exp.refunded[code], payable)
        if seen != wanted or set(r["payments"]) != exp.reconciled[code]:
            wrong.append(f"reconciliation {code}: (payments, spent, refunded, onchain, payable) "
                         f"{seen}, expected {wanted}")
    if {r["currency"] for r in recon["currencies"]} != {k for k, v in exp.reconciled.items()
                                                       if v}:
        wrong.append(f"reconciliation: currencies {[r['currency'] for r in recon['currencies']]}")
    seen_ids: list[str] = []
    cursors: list[str] = []
    query: dict[str, Any] = {**params, "limit": page}
    while True:
        body = _get(client, "/v1/payments", query).json()
        seen_ids += [p["payment_id"] for p in body["payments"]]
        if body["next"] is None:
            break
        cursors.append(body["next"])
        query["after"] = body["next"]
    if len(seen_ids) != len(set(seen_ids)) or set(seen_ids) != exp.payments:
        wrong.append(f"payments?day: {len(seen_ids)} rows ({len(set(seen_ids))} distinct), "
                     f"expected the day's {len(exp.payments)}; of the neighbour day: "
                     f"{len(set(seen_ids) & other.payments)}")
    deep = cursors[len(cursors) // 2] if cursors else ""
    return wrong, deep


# -- the measurement ------------------------------------------------------------------------------
@dataclass
class Cell:
    query: str
    clients: int
    latencies: list[float]
    seconds: float
    wanted: int


def measure(base: str, token: str, path: str, params: dict[str, Any], clients: int,
            requests: int, warmup: int, budget: float) -> Cell:
    """`requests` GETs shared by `clients` threads (one connection each), after `warmup` (cut
    short after a quarter of `budget`); no request is started after `budget` seconds."""
    headers = {"Authorization": f"Bearer {token}"}
    latencies: list[float] = []
    lock = threading.Lock()
    left = [requests]
    failed: list[str] = []
    with httpx.Client(base_url=base, headers=headers, timeout=600) as client:
        warm_until = time.perf_counter() + budget / 4
        for _ in range(warmup):  # at least one; no more than a quarter of the budget
            _get(client, path, params)
            if time.perf_counter() > warm_until:
                break
    started = time.perf_counter()
    stop_at = started + budget

    def worker() -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=600) as client:
            while True:
                with lock:
                    if left[0] <= 0 or time.perf_counter() > stop_at or failed:
                        return
                    left[0] -= 1
                t0 = time.perf_counter()
                try:
                    _get(client, path, params)
                except (RuntimeError, httpx.HTTPError) as exc:
                    with lock:
                        failed.append(str(exc))
                    return
                took = time.perf_counter() - t0
                with lock:
                    latencies.append(took)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        raise RuntimeError(failed[0])
    return Cell("", clients, latencies, time.perf_counter() - started, requests)


def show(cell: Cell) -> str:
    ms = [v * 1000 for v in cell.latencies]
    n = len(ms)
    note = "" if n == cell.wanted else f" (budget: {n} of {cell.wanted})"
    return (f"{cell.query:<34} {cell.clients:>7} {n:>6} {percentile(ms, 50):>8.1f} "
            f"{percentile(ms, 95):>8.1f} {percentile(ms, 99):>8.1f} {max(ms):>8.1f} "
            f"{n / cell.seconds:>7.2f}{note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--payments", type=int, default=100_000,
                        help="payments on the settlement day measured (100,000)")
    parser.add_argument("--neighbour", type=int, default=None,
                        help="payments on the day before (a tenth of --payments)")
    parser.add_argument("--safes", type=int, default=1000, help="Safes, one card each (1000)")
    parser.add_argument("--requests", type=int, default=200, help="per query and mode (200)")
    parser.add_argument("--warmup", type=int, default=10, help="per query and mode (10)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (8)")
    parser.add_argument("--budget", type=float, default=180.0,
                        help="seconds a query and mode may take before it stops early (180)")
    parser.add_argument("--page", type=int, default=100, help="payments per page (100)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    neighbour = args.payments // 10 if args.neighbour is None else args.neighbour
    if min(args.payments, args.safes, args.requests, args.clients, args.page) < 1 or \
            min(neighbour, args.warmup) < 0 or args.budget <= 0:
        parser.error("the counts must be positive (--neighbour and --warmup may be 0)")

    print(describe())
    day = datetime.now(UTC).date() - timedelta(days=1)
    days = {day - timedelta(days=1): Expected(), day: Expected()}
    rng = random.Random(args.seed)
    with settings_for_run() as settings, database(settings) as engine:
        print(server_facts(engine) + (" (CARDPAY_DATABASE_URL)" if settings.database_url
                                      else " (embedded, temp dir)"))
        if holds_events(engine):
            return 2
        started = time.perf_counter()
        feed = in_time_order([day_events(d, args.payments if d == day else neighbour,
                                         args.safes, rng, exp) for d, exp in days.items()])
        write_events(engine, feed)
        events_s = time.perf_counter() - started
        transfers = write_ledger(engine, feed, args.safes)
        ledger_s = time.perf_counter() - started - events_s
        settle(engine, feed, days)
        settle_s = time.perf_counter() - started - events_s - ledger_s
        applied = project(engine, settings)
        with engine.connect() as conn:
            conn.execute(text("ANALYZE"))
            rows = {t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one())
                    for t in ("events", "rm_payments", "ledger_transfers", "ledger_entries",
                              "settlement_items", "settlement_batches", "settlement_reports")}
        total_s = time.perf_counter() - started
        exp = days[day]
        print(f"workload: day {day} with {args.payments:,} payments, {day - timedelta(days=1)} "
              f"with {neighbour:,}; {args.safes} Safes (EUR/EURe, USD/USDCe); "
              + ", ".join(f"{k} {v:,}" for k, v in exp.paths.most_common()) + " (the day's)")
        print(f"  written in {total_s:.0f} s (not part of the result): events {events_s:.0f} s, "
              f"ledger {transfers:,} transfers {ledger_s:.0f} s, reports and settlement saga "
              f"{settle_s:.0f} s, projection of {applied:,} events "
              f"{total_s - events_s - ledger_s - settle_s:.0f} s")
        print("  rows: " + ", ".join(f"{t} {n:,}" for t, n in rows.items()), flush=True)

        url = engine.url.render_as_string(hide_password=False)
        token = PostgresTokenStore(engine).create(["finance:read"], name="qbench").token
        cells: list[Cell] = []
        with tempfile.TemporaryDirectory(prefix="cardpay-qbench-") as tmp, \
                api_process(api_env(url), Path(tmp) / "api.log") as (base, _):
            with httpx.Client(base_url=base, timeout=600,
                              headers={"Authorization": f"Bearer {token}"}) as client:
                wrong, deep = check(client, day, exp, days[day - timedelta(days=1)], args.page)
            if wrong:
                print("THE API'S FIGURES DIFFER FROM WHAT WAS WRITTEN:\n" + "\n".join(wrong),
                      file=sys.stderr)
                return 1
            print(f"checked: settlements (JSON, CSV), reconciliation (clean) and every page of "
                  f"/v1/payments?day={day} show what was written", flush=True)
            on = day.isoformat()
            queries: list[tuple[str, str, dict[str, Any]]] = [
                ("settlements?day (JSON)", "/v1/settlements", {"day": on}),
                ("settlements?day&format=csv", "/v1/settlements", {"day": on, "format": "csv"}),
                ("reconciliation?day", "/v1/reconciliation", {"day": on}),
                (f"payments?day&limit={args.page} (first)", "/v1/payments",
                 {"day": on, "limit": args.page}),
                (f"payments?day&limit={args.page} (deep)", "/v1/payments",
                 {"day": on, "limit": args.page, "after": deep}),
            ]
            for name, path, params in queries:
                for clients in (1, args.clients):
                    cell = measure(base, token, path, params, clients, args.requests,
                                   args.warmup, args.budget)
                    cell.query = name
                    cells.append(cell)
                    print("  " + show(cell), flush=True)
    print()
    print(f"{'query (GET /v1/...)':<34} {'clients':>7} {'n':>6} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'p99 ms':>8} {'max ms':>8} {'req/s':>7}")
    for cell in cells:
        print(show(cell))
    return 0


if __name__ == "__main__":
    sys.exit(main())
