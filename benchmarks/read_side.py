"""The read side at scale: the payments projection of N events built live, then rebuilt beside it
and swapped in (issue 9's goal: a rebuild of 1,000,000 events in at most 60 s).

    python -m benchmarks.read_side [--events 1000000] [--batch-size 2000] [--live-batch-size 500]
                                   [--days 14] [--seed 1] [--kafka [--partitions 4]]

Steps, one after the other, on one PostgreSQL (embedded, in a temp dir; or CARDPAY_DATABASE_URL,
which must hold no events: the benchmark writes its own):

1. Write (not part of the result): `--events` payment events of a deterministic mix, made by the
   `Payment` aggregate from the commands the handlers and sagas send, so every stream is one the
   real system could have written: authorizations (some declined), spends, the network's
   clearings and the sagas' clears (some below the authorization: a difference refund),
   settlements, reversals and expiries (refunds of the spend), returns (refunds of the excess),
   holds still open at the end; two tokens (EURe 18 decimals, USDCe 6), `--days` days. The
   streams are interleaved in time order, as the feed would hold them, and appended through
   `PostgresEventStore.append` in transactions of `--write-batch` events (no API; outbox rows
   only with `--kafka`): this measures the read side, not the write side. The last payments may
   be cut mid-life (in flight when the feed ends), as in a live system.
2. Live projection from scratch: `cardpay.bootstrap.payments_projector` on the PostgreSQL log
   feed, run by `cardpay project`'s loop (`run_projector(until_idle=True)`), batches of
   `--live-batch-size` (`cardpay project`'s default, 500). Events applied per second of the whole
   run (the idle tail, two empty polls of 0.05 s, included).
3. Rebuild: `rebuild_projection(..., swap=True)` (`cardpay projections rebuild payments`) of both
   read-model tables (rm_payments, rm_daily) while the live projector is idle: shadow tables,
   a second projector from the start of the feed in batches of `--batch-size`, the checksum
   comparison under the live projector's lock, the swap. Seconds from its call to its return
   (everything it does) and events per second. Then checked: it says equal and swapped, no shadow
   table is left, and the live tables' checksums now are the rebuilt ones'.

4. With `--kafka`: a local broker (`cardpay.devstack.kafka_broker`, the tests' harness, with the
   full JIT as benchmarks run it), then twice, with 1 and with 2 consumers: the read model and
   positions reset (`reset_projection(..., republish=True)`), a fresh topic of `--partitions`,
   that many `cardpay project --batch-size <--live-batch-size>` processes in one fresh consumer
   group (`CARDPAY_KAFKA_GROUP`, ADR 0016), waited for until they share every partition; only
   then `cardpay relay --until-idle` publishes the outbox, so each consumer has its share from
   the first record. Events per second from the first stored position to the last (the
   positions reach the topic's end offsets). The relay runs meanwhile: when it finishes near the
   projection's end, it was the bound, not the consumers (its time is printed). The tables built
   are checked equal to the rebuilt ones.

The process tunes its garbage collector at start as `cardpay project` and `cardpay projections
rebuild` do (`cardpay.runtime.tune_gc`). Printed: the machine, PostgreSQL's version and
settings, the workload, one table. The exit status is 1 when the rebuilt tables differ from the
live ones (or the swap did not happen, or a Kafka run built other tables), else 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Connection, Engine, func, select, text

from benchmarks.machine import describe
from cardpay.bootstrap import PAYMENTS, database, payments_projector
from cardpay.bootstrap.project import READ_MODELS, reset_projection, run_projector
from cardpay.bootstrap.rebuild import KEYS as TABLE_KEYS
from cardpay.bootstrap.rebuild import (
    SUFFIX,
    RebuildMismatch,
    RebuildResult,
    checksum,
    rebuild_projection,
)
from cardpay.devstack.kafka_broker import KafkaBroker
from cardpay.postgres.schema import events as events_table
from cardpay.postgres.schema import quarantine
from cardpay.postgres.uow import PostgresUnitOfWork
from cardpay.runtime import tune_gc
from cardpay.settings import Settings
from domain import commands as c
from domain.card_network import authorization_expires_at
from domain.events import ChainEvidence, DomainEvent
from domain.money import Currency, Money
from domain.payment import Payment, handle

EURE = Currency("EURe", 18)
USDCE = Currency("USDCe", 6)
START = datetime(2026, 6, 1, tzinfo=UTC)
CHAIN_ID = 100
BLOCK_S = 5
CARDHOLDERS = 400
"""Safes with one card each; even ones hold EURe, odd ones USDCe."""
MERCHANTS = (("Edeka Mitte", "5411"), ("Deutsche Bahn", "4112"), ("Cafe Einstein", "5814"),
             ("Shell Station", "5541"), ("Hotel Adlon", "7011"), ("Amazon EU", "5999"),
             ("Lufthansa", "3008"), ("Sixt", "7512"))
EVENTS_PER_PAYMENT = 5.6
"""About what the mix below averages: sets the payments' spacing so the events span `--days`."""
TABLES = READ_MODELS[PAYMENTS]


# -- the workload ---------------------------------------------------------------------------------
@dataclass
class Mix:
    """What the generated payments did (counted per payment, by its path)."""

    payments: int = 0
    """Payments in the feed (their first event was written)."""
    paths: Counter[str] = field(default_factory=Counter)
    types: Counter[str] = field(default_factory=Counter)
    planned: dict[str, str] = field(default_factory=dict)
    """The path of each payment generated and not yet in the feed."""


def _evidence(at: datetime, n: int, salt: int) -> ChainEvidence:
    block = int((at - START).total_seconds()) // BLOCK_S + 1
    return ChainEvidence(chain_id=CHAIN_ID, block_number=block, block_hash=f"0x{block:064x}",
                         tx_hash=f"0x{n:056x}{salt:08x}", log_index=salt)


def _refund(cmds: list[c.Command], pid: str, n: int, refund_id: str, amount: Money,
            at: datetime, salt: int) -> datetime:
    """The refund's submission by the sender and its confirmation from the chain."""
    sent = at + timedelta(seconds=20)
    seen = sent + timedelta(seconds=30)
    cmds.append(c.RecordRefundSubmission(command_id=f"{pid}:sub:{salt}", payment_id=pid, at=sent,
                                         refund_id=refund_id, tx_hash=f"0x{n:056x}f{salt:07x}"))
    cmds.append(c.ConfirmRefund(command_id=f"{pid}:ref:{salt}", payment_id=pid, at=seen,
                                refund_id=refund_id, amount=amount,
                                evidence=_evidence(seen, n, salt)))
    return seen


def _settle_at(cleared: datetime) -> datetime:
    """The next day's payout (10:00 UTC): the settlement batch of the clearing's day."""
    return datetime(cleared.year, cleared.month, cleared.day, 10, tzinfo=UTC) + timedelta(days=1)


def payment(n: int, at: datetime, rng: random.Random, mix: Mix) -> list[DomainEvent]:
    """One payment's events from the commands the handlers and sagas would send, in order."""
    pid = f"auth-{n:08d}"
    holder = rng.randrange(CARDHOLDERS)
    currency = EURE if holder % 2 == 0 else USDCE
    account = f"0x{holder + 1:040x}"
    merchant, mcc = rng.choice(MERCHANTS)
    cents = rng.randint(100, 50_000)
    amount = Money(cents * 10 ** (currency.decimals - 2), currency)
    roll = rng.random()
    cmds: list[c.Command] = []
    if roll < 0.04:
        path = "declined"
        cmds.append(c.DeclineAuthorization(command_id=pid, payment_id=pid, at=at, account=account,
                                           amount=amount, merchant=merchant, mcc=mcc,
                                           reason="insufficient_funds"))
    else:
        expires = authorization_expires_at(at, mcc)
        cmds.append(c.AuthorizePayment(command_id=pid, payment_id=pid, at=at, account=account,
                                       amount=amount, requested=amount, merchant=merchant,
                                       mcc=mcc, expires_at=expires))
        spent_at = at + timedelta(seconds=rng.randint(6, 30))
        cmds.append(c.ConfirmSpend(command_id=f"{pid}:spend", payment_id=pid, at=spent_at,
                                   account=account, amount=amount,
                                   evidence=_evidence(spent_at, n, 0)))
        if roll < 0.07:  # the merchant reversed it; the saga refunds the spend
            path = "reversed"
            gone = spent_at + timedelta(minutes=rng.randint(5, 600))
            cmds.append(c.ReverseAuthorization(command_id=f"{pid}:rev", payment_id=pid, at=gone,
                                               reason="network reversal"))
            cmds.append(c.ReversePayment(command_id=f"{pid}:saga:reverse", payment_id=pid,
                                         at=gone, reason="reversed"))
            _refund(cmds, pid, n, f"{pid}:saga:reverse:reversal", amount, gone, 1)
        elif roll < 0.09:  # never cleared: the network's expiry, the saga's reversal
            path = "expired"
            cmds.append(c.ExpireAuthorization(command_id=f"expiry:{pid}", payment_id=pid,
                                              at=expires, by_network=True))
            cmds.append(c.ReversePayment(command_id=f"{pid}:saga:reverse", payment_id=pid,
                                         at=expires, reason="expired"))
            _refund(cmds, pid, n, f"{pid}:saga:reverse:reversal", amount, expires, 1)
        elif roll < 0.12:
            path = "open hold"  # not cleared yet when the feed ends
        else:
            cleared_at = spent_at + timedelta(hours=rng.randint(18, 60))
            final = amount
            if rng.random() < 0.08:  # cleared below the authorization (a tip left out, fuel)
                final = Money(max(1, amount.units * rng.randint(50, 99) // 100), currency)
            cmds.append(c.RecordClearing(command_id=f"clr-{n:08d}", payment_id=pid,
                                         at=cleared_at, amount=final, final=True))
            cmds.append(c.ClearPayment(command_id=f"{pid}:saga:clear", payment_id=pid,
                                       at=cleared_at, amount=final))
            path = "cleared"
            if final != amount:
                path = "cleared below, refunded"
                _refund(cmds, pid, n, f"{pid}:saga:clear:difference", amount - final,
                        cleared_at, 2)
            settled_at = _settle_at(cleared_at)
            cmds.append(c.SettlePayment(command_id=f"{pid}:settle", payment_id=pid,
                                        at=settled_at,
                                        batch_id=f"{currency.code}-{cleared_at.date()}"))
            if rng.random() < 0.03:  # the merchant's return, after the payout
                path += ", returned"
                back = settled_at + timedelta(hours=rng.randint(2, 48))
                part = Money(max(1, final.units * rng.randint(20, 100) // 100), currency)
                cmds.append(c.RecordReturn(command_id=f"ret-{n:08d}", payment_id=pid, at=back,
                                           amount=part))
                cmds.append(c.RefundExcess(command_id=f"{pid}:saga:excess", payment_id=pid,
                                           at=back, reason="return"))
                _refund(cmds, pid, n, f"{pid}:saga:excess:excess", part, back, 3)
    aggregate = Payment(pid)
    for cmd in cmds:
        handle(aggregate, cmd)
    mix.planned[pid] = path
    return aggregate.pending_events


def interleaved(total: int, days: int, seed: int, mix: Mix) -> Iterator[DomainEvent]:
    """`total` events of payments started evenly over `days` days, in time order (the order the
    feed holds them in). A payment's events are held in a heap until no later-starting payment
    can come before them, so memory holds the payments in flight, not the whole feed."""
    rng = random.Random(seed)
    spacing = days * 86_400 / max(1.0, total / EVENTS_PER_PAYMENT)
    pending: list[tuple[datetime, int, int, DomainEvent]] = []
    sent = n = 0
    while sent < total:
        at = START + timedelta(seconds=n * spacing)
        while pending and pending[0][0] < at and sent < total:
            yield heapq.heappop(pending)[3]
            sent += 1
        for event in payment(n, at, rng, mix):
            heapq.heappush(pending, (event.occurred_at, n, event.version, event))
        n += 1
    # the loop ends with `total` sent; what is left in the heap was still to come


def write(engine: Engine, total: int, days: int, seed: int, per_transaction: int,
          outbox_topic: str | None = None) -> tuple[Mix, float]:
    """Append the workload through the event store (with `outbox_topic`, with the outbox rows
    the relay publishes, as the services write them); (its mix, seconds)."""
    mix = Mix()
    started = time.perf_counter()
    chunk: list[DomainEvent] = []

    def flush() -> None:
        with PostgresUnitOfWork(engine, outbox_topic=outbox_topic) as uow:
            uow.events.append(chunk)
            uow.commit()
        for event in chunk:
            mix.types[type(event).__name__] += 1
            if event.version == 1:
                mix.payments += 1
                mix.paths[mix.planned.pop(event.stream_id)] += 1
        chunk.clear()

    for event in interleaved(total, days, seed, mix):
        chunk.append(event)
        if len(chunk) >= per_transaction:
            flush()
    if chunk:
        flush()
    with engine.connect() as conn:
        conn.execute(text("ANALYZE events"))
    return mix, time.perf_counter() - started


# -- the measurements -----------------------------------------------------------------------------
@dataclass
class Live:
    applied: int
    seconds: float
    quarantined: int
    rows: dict[str, int]


def project_live(settings: Settings, engine: Engine, batch_size: int) -> Live:
    projector = payments_projector(settings, engine, batch_size=batch_size)
    started = time.perf_counter()
    asyncio.run(run_projector(projector, asyncio.Event(), until_idle=True, poll_timeout=0.05,
                              give_up_after=60))
    seconds = time.perf_counter() - started
    with engine.connect() as conn:
        quarantined = int(conn.execute(select(func.count()).select_from(quarantine)).scalar_one())
        rows = {t: int(conn.execute(text(f'SELECT count(*) FROM "{t}"')).scalar_one())
                for t in TABLES}
    return Live(projector.applied, seconds, quarantined, rows)


def after_swap(engine: Engine, result: RebuildResult) -> tuple[list[str], float]:
    """What is wrong after a rebuild that says it swapped (empty: nothing), and the seconds one
    side's checksums take (what the comparison costs per side)."""
    wrong: list[str] = []
    if not (result.equal and result.swapped):
        wrong.append(f"rebuild returned equal={result.equal} swapped={result.swapped}")
    started = time.perf_counter()
    with engine.connect() as conn:
        left = [str(t) for (t,) in conn.execute(text(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE :p"), {"p": f"%{SUFFIX}"})]
        if left:
            wrong.append(f"shadow tables left: {', '.join(left)}")
        for check in result.tables:
            rows, digest = _checksum(conn, check.table)
            if (rows, digest) != (check.rows_rebuilt, check.checksum_rebuilt):
                wrong.append(f"{check.table}: the live table is not the rebuilt one "
                             f"({rows} rows, {digest})")
    return wrong, time.perf_counter() - started


@dataclass
class KafkaRun:
    consumers: int
    applied: list[int]
    """Events each `cardpay project` process says it applied."""
    seconds: float
    """From the first stored position (the group's first batch) to the last."""
    relay_seconds: float
    """How long `cardpay relay` took to publish everything (it runs meanwhile)."""
    records: int
    equal: bool
    """The tables it built equal the rebuilt ones (checksums)."""


ROOT = Path(__file__).resolve().parents[1]
APPLIED = re.compile(r"applied (\d+) events")


def _topic_progress(engine: Engine, topic: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT coalesce(sum(position), 0) FROM consumer_positions WHERE consumer = :c "
            "AND source LIKE :t"), {"c": PAYMENTS, "t": f"{topic}:%"}).scalar_one())


async def _end_offsets(bootstrap: str, topic: str, partitions: int) -> int:
    """The sum of the topic's end offsets: what the stored positions add up to when done."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
        return sum(int(offset) for offset in ends.values())
    finally:
        await consumer.stop()


ASSIGNMENT = re.compile(r"group \S+: (assigned|revoked) partitions (\d+(?:,\d+)*|none)")


def _owned(log: Path) -> frozenset[int]:
    """The partitions a `cardpay -v project` process holds now, from its log."""
    owned: frozenset[int] = frozenset()
    for kind, listed in ASSIGNMENT.findall(log.read_text(errors="replace")):
        parts = frozenset() if listed == "none" else frozenset(map(int, listed.split(",")))
        owned = parts if kind == "assigned" else owned - parts
    return owned


def project_kafka(engine: Engine, url: str, broker: KafkaBroker, consumers: int,
                  args: argparse.Namespace, expected: dict[str, tuple[int, str]]) -> KafkaRun:
    """From an empty read model and a fresh topic: `consumers` `cardpay project` processes join
    one fresh consumer group (ADR 0016) and share the partitions; only then is the whole outbox
    published to the topic (`cardpay relay`), so each consumes its share from the first record.
    Done when the stored positions reach the topic's end offsets; then SIGTERM."""
    reset_projection(engine, PAYMENTS, republish=True)
    topic = f"readbench-{consumers}-{random.randrange(10**9)}"
    with engine.begin() as conn:  # the relay sends each row to the topic it names
        conn.execute(text("UPDATE outbox SET topic = :t"), {"t": topic})
    broker.create_topic(topic, args.partitions)
    bootstrap = broker.bootstrap_servers
    env = {**os.environ, "CARDPAY_DATABASE_URL": url, "CARDPAY_KAFKA_BOOTSTRAP": bootstrap,
           "CARDPAY_KAFKA_TOPIC": topic, "CARDPAY_KAFKA_GROUP": f"{topic}-group"}
    everything = frozenset(range(args.partitions))
    with tempfile.TemporaryDirectory(prefix="cardpay-readbench-kafka-") as tmp:
        outs = [Path(tmp) / f"{i}.out" for i in range(consumers)]
        logs = [Path(tmp) / f"{i}.log" for i in range(consumers)]
        procs = []
        for out, log in zip(outs, logs, strict=True):
            with out.open("wb") as sink, log.open("wb") as err:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "cardpay.cli.main", "-v", "project", "--batch-size",
                     str(args.live_batch_size)], cwd=ROOT, env=env, stdout=sink, stderr=err))
        relay: subprocess.Popen[bytes] | None = None
        started = time.perf_counter()
        try:
            def alive() -> None:
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError("a `cardpay project` process exited early")
                if time.perf_counter() - started > args.kafka_timeout:
                    raise RuntimeError(f"not done after {args.kafka_timeout:.0f} s")

            while True:  # every member holds partitions, together all of them
                owned = [_owned(log) for log in logs]
                if all(owned) and frozenset().union(*owned) == everything and \
                        sum(map(len, owned)) == len(everything):
                    break
                alive()
                time.sleep(0.1)
            started = time.perf_counter()
            relay = subprocess.Popen(
                [sys.executable, "-m", "cardpay.cli.main", "relay", "--until-idle",
                 "--batch-size", "2000"], cwd=ROOT, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, env={**env, "CARDPAY_KAFKA_GROUP": ""})
            ends: int | None = None
            first: float | None = None
            relay_s = 0.0
            while ends is None or (done := _topic_progress(engine, topic)) < ends:
                if first is None and _topic_progress(engine, topic) > 0:
                    first = time.perf_counter()
                if ends is None and relay.poll() is not None:
                    if relay.returncode != 0:
                        raise RuntimeError(f"`cardpay relay` failed ({relay.returncode})")
                    relay_s = time.perf_counter() - started
                    ends = asyncio.run(_end_offsets(bootstrap, topic, args.partitions))
                alive()
                time.sleep(0.05)
            finished = time.perf_counter()
        finally:
            if relay is not None and relay.poll() is None:
                relay.kill()
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(timeout=60)
        applied = []
        for out in outs:
            found = APPLIED.search(out.read_text())
            applied.append(int(found.group(1)) if found else -1)
    with engine.connect() as conn:
        equal = all(_checksum(conn, table) == expected[table] for table in TABLES)
    return KafkaRun(consumers, applied, finished - (first if first is not None else started),
                    relay_s, done, equal)


def _checksum(conn: Connection, table: str) -> tuple[int, str]:
    columns = [str(col) for (col,) in conn.execute(text(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = "
        "current_schema() AND table_name = :t AND column_name <> 'updated_at' "
        "ORDER BY ordinal_position"), {"t": table})]
    return checksum(conn, table, columns, TABLE_KEYS[table])


def run_kafka(engine: Engine, args: argparse.Namespace, rebuilt: RebuildResult
              ) -> list[KafkaRun]:
    """A local broker (the tests' harness, `cardpay.devstack.kafka_broker`), then 1 and 2
    consumers, each run from an empty read model on a fresh topic."""
    url = engine.url.render_as_string(hide_password=False)
    expected = {t.table: (t.rows_rebuilt, t.checksum_rebuilt) for t in rebuilt.tables}
    broker = KafkaBroker(fast_startup=False)
    broker.start()
    try:
        return [project_kafka(engine, url, broker, n, args, expected) for n in (1, 2)]
    finally:
        broker.stop()


@contextlib.contextmanager
def settings_for_run() -> Iterator[Settings]:
    """CARDPAY_DATABASE_URL when set, else the embedded server in a temp dir (removed after)."""
    url = os.environ.get("CARDPAY_DATABASE_URL") or None
    if url is not None:
        yield Settings(database_url=url)
        return
    with tempfile.TemporaryDirectory(prefix="cardpay-readbench-") as tmp:
        yield Settings(data_dir=Path(tmp))


def server_facts(engine: Engine) -> str:
    with engine.connect() as conn:
        shown = {name: conn.execute(text(f"SHOW {name}")).scalar()
                 for name in ("server_version", "shared_buffers", "work_mem", "fsync",
                              "synchronous_commit", "max_wal_size")}
    return "PostgreSQL " + ", ".join(f"{k}={v}" for k, v in shown.items())


def holds_events(engine: Engine) -> bool:
    """True, and says so, when the database has events already (a benchmark writes its own)."""
    with engine.connect() as conn:
        if conn.execute(select(func.count()).select_from(events_table)).scalar_one():
            print("the database holds events already: give the benchmark an empty one",
                  file=sys.stderr)
            return True
    return False


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}" if seconds > 0 else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="events written (1,000,000)")
    parser.add_argument("--batch-size", type=int, default=2000,
                        help="the rebuild's batch (2000, `cardpay projections rebuild`'s default)")
    parser.add_argument("--live-batch-size", type=int, default=500,
                        help="the live projector's batch (500, `cardpay project`'s default)")
    parser.add_argument("--write-batch", type=int, default=10_000,
                        help="events per write transaction (10,000)")
    parser.add_argument("--days", type=int, default=14, help="days the payments start over (14)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kafka", action="store_true",
                        help="also: the projection through Kafka, 1 and 2 `cardpay project` "
                             "consumers in one group (starts a local broker)")
    parser.add_argument("--partitions", type=int, default=4, help="with --kafka: the topic's (4)")
    parser.add_argument("--kafka-timeout", type=float, default=1800.0,
                        help="with --kafka: seconds a run may take (1800)")
    args = parser.parse_args(argv)
    if min(args.events, args.batch_size, args.live_batch_size, args.write_batch, args.days) < 1:
        parser.error("--events, the batch sizes and --days must be at least 1")

    print(describe())
    tune_gc()  # what `cardpay project` and `cardpay projections rebuild` do at start
    topic = "cardpay.payments" if args.kafka else None
    kafka_runs: list[KafkaRun] = []
    with settings_for_run() as settings, database(settings) as engine:
        print(server_facts(engine) + (" (CARDPAY_DATABASE_URL)" if settings.database_url
                                      else " (embedded, temp dir)"))
        if holds_events(engine):
            return 2
        mix, write_s = write(engine, args.events, args.days, args.seed, args.write_batch,
                             outbox_topic=topic)
        print(f"workload: {args.events:,} events of {mix.payments:,} payments over "
              f"{args.days} days, 2 tokens, {CARDHOLDERS} cards; written in {write_s:.1f} s "
              f"({rate(args.events, write_s)} events/s, {args.write_batch:,} per transaction; "
              "not part of the result)")
        print("  payments by path: " + ", ".join(f"{k} {v:,}" for k, v in mix.paths.most_common()))
        print("  events by type: " + ", ".join(f"{k} {v:,}" for k, v in mix.types.most_common()))

        live = project_live(settings, engine, args.live_batch_size)
        print(f"live projection: {live.applied:,} applied in {live.seconds:.1f} s; rows "
              + ", ".join(f"{t} {n:,}" for t, n in live.rows.items())
              + f"; quarantined {live.quarantined}", flush=True)

        marks: list[tuple[float, int]] = []
        started = time.perf_counter()

        def progress(done: int, total: int) -> None:
            marks.append((time.perf_counter() - started, done))

        failed: list[str] = []
        try:
            result = rebuild_projection(settings, engine, PAYMENTS, TABLES, swap=True,
                                        batch_size=args.batch_size, progress=progress)
        except RebuildMismatch as mismatch:
            result = mismatch.result
            failed.append(str(mismatch))
            for check in result.tables:
                if not check.equal:
                    failed.append(f"  {check.table}: live only {check.only_live[:3]}, "
                                  f"rebuilt only {check.only_rebuilt[:3]}")
        wrong, checksum_s = after_swap(engine, result) if not failed else ([], 0.0)
        failed += wrong
        caught_up = next((at for at, done in marks if done >= args.events), None)
        if topic is not None and not failed:
            kafka_runs = run_kafka(engine, args, result)

    rows = [
        ("live projection (run_projector)", live.applied, live.seconds,
         f"batch {args.live_batch_size}, PostgreSQL log feed, from scratch"),
        ("rebuild, swap=True (rebuild_projection)", result.applied, result.seconds,
         f"batch {args.batch_size}; {'equal and swapped' if not failed else 'FAILED'}"),
    ]
    print()
    print(f"{'step':<42} {'events':>11} {'seconds':>9} {'events/s':>10}  notes")
    for run in kafka_runs:
        note = (f"batch {args.live_batch_size}, {args.partitions} partitions, applied per "
                f"process {run.applied}, relay done after {run.relay_seconds:.2f} s; "
                + ("equal to the rebuilt tables" if run.equal
                   else "DIFFERS from the rebuilt tables"))
        rows.append((f"Kafka, {run.consumers} consumer{'s' if run.consumers > 1 else ''} "
                     "in one group", sum(run.applied), run.seconds, note))
        if not run.equal:
            failed.append(f"the projection through Kafka with {run.consumers} consumers differs")
    for name, n, seconds, note in rows:
        print(f"{name:<42} {n:>11,} {seconds:>9.2f} {rate(n, seconds):>10}  {note}")
    if caught_up is not None:
        print(f"  of the rebuild: the feed's end reached after {caught_up:.2f} s; one side's "
              f"checksums of both tables take {checksum_s:.2f} s (the rest: shadows, "
              "comparison of both sides, swap)")
    print(f"goal for 1,000,000 events: rebuild <= 60 s; this run: {result.seconds:.1f} s for "
          f"{result.applied:,}")
    if failed:
        print("REBUILD FAILED:\n" + "\n".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
