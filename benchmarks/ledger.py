"""Ledger throughput on embedded PostgreSQL: transfers/s one per transaction, in batches, and on
one hot account.

    python -m benchmarks.ledger [--accounts 10000] [--batched 80000] [--single 3000]

Every transfer goes through `PostgresLedger.create_transfers` in a `PostgresUnitOfWork` and is
committed: the same path the service layer takes, with the database's own checks (balanced
journals, account flags, one resolution per pending) on. "spread" transfers move between random
cardholder accounts (DEBITS_MUST_NOT_EXCEED_CREDITS, funded first); "hot" ones all credit the one
network-payable account; "two-phase" is a hold then its post (two transfers) per payment.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

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


def _timed(label: str, transfers: Sequence[Transfer], per_tx: int,
           run: Callable[[Sequence[Transfer]], None]) -> float:
    start = time.perf_counter()
    for part in _chunks(transfers, per_tx):
        run(part)
    elapsed = time.perf_counter() - start
    rate = len(transfers) / elapsed
    print(f"{label:<44} {len(transfers):>7,} transfers in {elapsed:7.2f} s: {rate:>9,.0f} /s")
    return rate


def _concurrently(engine: Engine, clients: int) -> Callable[[Sequence[Transfer]], None]:
    """Run each part on one of `clients` threads: commits then share WAL flushes (group commit)."""

    def run_all(transfers: Sequence[Transfer]) -> None:
        with ThreadPoolExecutor(clients) as pool:
            for future in [pool.submit(_apply, engine, [t]) for t in transfers]:
                future.result()

    return run_all


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
            _timed(f"one per transaction, {CLIENTS} clients, spread", spread, len(spread),
                   _concurrently(engine, CLIENTS))
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
