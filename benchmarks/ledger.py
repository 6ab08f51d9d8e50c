"""Ledger throughput on embedded PostgreSQL: transfers/s one per transaction, in batches, and on
one hot account.

    python -m benchmarks.ledger [--accounts 10000] [--batched 80000] [--single 3000] [--processes 4]

Every transfer goes through `PostgresLedger.create_transfers` in a `PostgresUnitOfWork` and is
committed: the same path the service layer takes, with the database's own checks (balanced
journals, account flags, one resolution per pending) on. "spread" transfers move between random
cardholder accounts (DEBITS_MUST_NOT_EXCEED_CREDITS, funded first); "hot" ones all credit the one
network-payable account; "two-phase" is a hold then its post (two transfers) per payment.
"N client processes" runs one transfer per transaction from N processes at once (processes, not
threads: each has its own interpreter, as separate API workers would), each with its own engine
made by `make_engine`; the rate is all their transfers over the wall time from a common start.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from multiprocessing.synchronize import Event
from typing import Any

from sqlalchemy import Engine, text

from benchmarks.machine import describe
from cardpay.devstack.embedded_postgres import EmbeddedPostgres
from cardpay.postgres.engine import make_engine, upgrade
from cardpay.postgres.uow import PostgresUnitOfWork
from domain.ledger import (
    AccountKind,
    ChartOfAccounts,
    CreateTransferResult,
    Transfer,
    TransferFlags,
)

CHART = ChartOfAccounts("EURe")
PAYABLE = CHART.account_id(AccountKind.NETWORK_PAYABLE)
SAFES = CHART.account_id(AccountKind.SAFE_BALANCES)
NOW = datetime(2026, 12, 1, tzinfo=UTC)
CENT = 10**16  # EURe base units
CLIENTS = 8


class Workload:
    def __init__(self, accounts: int, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.holders = [CHART.account_id(AccountKind.CARDHOLDER_FUNDS, f"0x{i:040x}")
                        for i in range(accounts)]
        self._ids = iter(range(10**12))

    def _id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids)}"

    def spread(self, n: int) -> list[Transfer]:
        out = []
        for _ in range(n):
            a, b = self.rng.sample(self.holders, 2)
            out.append(Transfer(self._id("s"), a, b, self.rng.randint(1, 5_000) * CENT, "EURe",
                                "p2p"))
        return out

    def hot(self, n: int) -> list[Transfer]:
        return [Transfer(self._id("h"), self.rng.choice(self.holders), PAYABLE,
                         self.rng.randint(1, 5_000) * CENT, "EURe", "clearing")
                for _ in range(n)]

    def holds(self, n: int) -> list[Transfer]:
        return [Transfer(self._id("a"), self.rng.choice(self.holders), PAYABLE,
                         self.rng.randint(1, 5_000) * CENT, "EURe", "authorization",
                         TransferFlags.PENDING, timeout=7 * 86_400) for _ in range(n)]

    def posts(self, holds: Sequence[Transfer]) -> list[Transfer]:
        return [Transfer(self._id("c"), amount=h.amount - CENT, flags=TransferFlags.POST_PENDING,
                         pending_id=h.id) for h in holds]


def _apply(engine: Engine, batch: Sequence[Transfer]) -> None:
    with PostgresUnitOfWork(engine) as w:
        results = w.ledger.create_transfers(batch, NOW)
        w.commit()
    refused = [r for r in results if r is not CreateTransferResult.OK]
    if refused:
        raise RuntimeError(f"{len(refused)} transfers refused, e.g. {refused[0]}")


def _chunks(items: Sequence[Transfer], size: int) -> Iterator[Sequence[Transfer]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _report(label: str, transfers: int, elapsed: float) -> float:
    rate = transfers / elapsed
    print(f"{label:<44} {transfers:>7,} transfers in {elapsed:7.2f} s: {rate:>9,.0f} /s")
    return rate


def _timed(label: str, transfers: Sequence[Transfer], per_tx: int,
           run: Callable[[Sequence[Transfer]], None]) -> float:
    start = time.perf_counter()
    for part in _chunks(transfers, per_tx):
        run(part)
    return _report(label, len(transfers), time.perf_counter() - start)


def _concurrently(engine: Engine, clients: int) -> Callable[[Sequence[Transfer]], None]:
    """Run each part on one of `clients` threads: commits then share WAL flushes (group commit)."""

    def run_all(transfers: Sequence[Transfer]) -> None:
        with ThreadPoolExecutor(clients) as pool:
            for future in [pool.submit(_apply, engine, [t]) for t in transfers]:
                future.result()

    return run_all


def _client_process(url: str, transfers: Sequence[Transfer], ready: Any, start: Event,
                    done: Any) -> None:
    """One client process: its own engine, one transfer per transaction, from `start` on."""
    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect():  # connected before the clock starts, as a running worker is
            pass
        ready.put(True)
        start.wait()
        for transfer in transfers:
            _apply(engine, [transfer])
        done.put(time.monotonic())
    except BaseException as exc:
        done.put(repr(exc))
        raise
    finally:
        engine.dispose()


def _in_processes(label: str, url: str, transfers: Sequence[Transfer], processes: int) -> float:
    """Split the transfers over `processes` client processes; time them from a common start
    (after every process has imported and connected) to the last one's end."""
    spawn = multiprocessing.get_context("spawn")
    ready, done, start = spawn.Queue(), spawn.Queue(), spawn.Event()
    workers = [spawn.Process(target=_client_process,
                             args=(url, transfers[i::processes], ready, start, done))
               for i in range(processes)]
    for w in workers:
        w.start()
    for _ in workers:
        ready.get(timeout=120)
    began = time.monotonic()
    start.set()
    ends = [done.get(timeout=600) for _ in workers]
    for w in workers:
        w.join()
    failed = [e for e in ends if isinstance(e, str)]
    if failed:
        raise RuntimeError(f"client process failed: {failed[0]}")
    return _report(label, len(transfers), max(ends) - began)


def setup(engine: Engine, work: Workload) -> None:
    with PostgresUnitOfWork(engine) as w:
        w.ledger.create_accounts(CHART.house_accounts() + [
            CHART.account(AccountKind.CARDHOLDER_FUNDS, h.rsplit(":", 1)[1])
            for h in work.holders])
        w.commit()
    funding = [Transfer(f"fund-{i}", SAFES, h, 10**9 * CENT, "EURe", "deposit")
               for i, h in enumerate(work.holders)]
    for part in _chunks(funding, 8_000):
        _apply(engine, part)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--batched", type=int, default=80_000,
                        help="transfers per batched run")
    parser.add_argument("--single", type=int, default=3_000,
                        help="transfers per one-per-transaction run")
    parser.add_argument("--processes", type=int, default=4,
                        help="client processes for the multi-process runs")
    args = parser.parse_args(argv)
    print(describe())
    with EmbeddedPostgres() as pg:
        engine = make_engine(pg.url, pool_size=CLIENTS + 2)
        try:
            upgrade(engine)
            with engine.connect() as conn:
                version = conn.execute(text("SHOW server_version")).scalar()
                sync = conn.execute(text("SHOW synchronous_commit")).scalar()
                fsync = conn.execute(text("SHOW fsync")).scalar()
            print(f"PostgreSQL {version} (embedded), fsync={fsync}, "
                  f"synchronous_commit={sync}; {args.accounts:,} cardholder accounts")
            work = Workload(args.accounts)
            setup(engine, work)

            def apply(part: Sequence[Transfer]) -> None:
                _apply(engine, part)

            _timed("one per transaction, spread", work.spread(args.single), 1, apply)
            _timed("one per transaction, hot account", work.hot(args.single), 1, apply)
            spread = work.spread(args.single)
            _timed(f"one per transaction, {CLIENTS} client threads, spread", spread,
                   len(spread), _concurrently(engine, CLIENTS))
            n = args.processes
            _in_processes(f"one per transaction, {n} processes, spread", pg.url,
                          work.spread(args.single * 2), n)
            _in_processes(f"one per transaction, {n} processes, hot account", pg.url,
                          work.hot(args.single * 2), n)
            for size in (1_000, 8_000):
                _timed(f"batches of {size:,}, spread", work.spread(args.batched), size, apply)
            _timed("batches of 8,000, hot account", work.hot(args.batched), 8_000, apply)
            holds = work.holds(args.batched // 2)
            two_phase = holds + work.posts(holds)
            _timed("batches of 8,000, two-phase (hold, then post)", two_phase, 8_000, apply)
            with engine.connect() as conn:
                unbalanced = conn.execute(text(
                    "SELECT count(*) FROM (SELECT 1 FROM ledger_entries GROUP BY journal_id, "
                    "ledger HAVING sum(debits_posted) <> sum(credits_posted) "
                    "OR sum(debits_pending) <> sum(credits_pending)) j")).scalar()
                entries = conn.execute(text("SELECT count(*) FROM ledger_entries")).scalar()
            print(f"after the runs: {entries:,} entries, {unbalanced} unbalanced journals")
        finally:
            engine.dispose()


if __name__ == "__main__":
    main()
