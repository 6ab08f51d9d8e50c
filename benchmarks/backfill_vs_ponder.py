"""Backfill side by side: cardpay vs Ponder 0.16.10 on the same Anvil node and the same events.

    python -m benchmarks.backfill_vs_ponder [--events 100000] [--seed 1]

One Anvil node, one workload (card spends: a Spend log from the spender module + the token Transfer
into the settlement account). Each indexer's clock runs from its start until every row is visible:
- cardpay: embedded PostgreSQL starts, the schema is migrated, then `cardpay backfill` (listener →
  event store) and `cardpay project` (event log → payments read model) run as two processes, as in
  production; stop when the read model holds one row per card event with the exact totals.
- Ponder: `ponder start` with its embedded PGlite (see benchmarks/ponder_bench.py); stop when every
  row is visible (it indexes the last blocks after /ready).
Prints both rates, the ratio and the machine.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from benchmarks.local_stack import local_stack
from benchmarks.machine import describe
from benchmarks.ponder_bench import run_ponder
from benchmarks.workload import Workload, generate
from cardpay.devstack.anvil import AnvilNode
from cardpay.postgres.schema import rm_payments


@dataclass(frozen=True)
class CardpayResult:
    seconds: float
    rows: int

    @property
    def events_per_second(self) -> float:
        return self.rows / self.seconds


def _spawn(env: dict[str, str], *args: str, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "cardpay.cli.main", *args], env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def run_cardpay(workload: Workload, work_dir: Path, timeout: float = 1800) -> CardpayResult:
    started = time.perf_counter()
    with ExitStack() as stack:
        local = stack.enter_context(local_stack(workload, work_dir))
        engine, deployment = local.engine, local.deployment
        env = {**local.env, "CARDPAY_MAX_BLOCK_RANGE": "2000"}
        project = _spawn(env, "project", "--batch-size", "5000", log=work_dir / "project.log")
        stack.callback(_stop, project)
        backfill = _spawn(env, "backfill", "--preset", "local", "--deployment", str(deployment),
                          "--rpc-url", workload.rpc_url, "--from-block", str(workload.start_block),
                          "--to-block", str(workload.head_block), log=work_dir / "backfill.log")
        stack.callback(_stop, backfill)
        expected = {s: (t.count, t.amount) for s, t in workload.per_token.items()}
        while True:
            with engine.connect() as conn:
                rows = dict((cur, (int(n), int(total))) for cur, n, total in conn.execute(
                    select(rm_payments.c.currency, func.count(), func.sum(rm_payments.c.spent))
                    .group_by(rm_payments.c.currency)))
            if rows == expected:
                seconds = time.perf_counter() - started
                break
            for proc in (project, backfill):
                if proc.poll() not in (None, 0):
                    raise RuntimeError(f"cardpay process failed; see {work_dir}")
            if time.perf_counter() - started > timeout:
                raise RuntimeError(f"cardpay did not finish in {timeout:.0f}s: {rows}")
            time.sleep(0.1)
    return CardpayResult(seconds, workload.events)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cardpay-bench-") as tmp, AnvilNode() as node:
        work = Path(tmp)
        workload = generate(node.rpc_url, args.events, args.seed)
        print(describe())
        print(f"workload: {workload.events:,} card events in {workload.blocks:,} blocks "
              f"({workload.transactions:,} txs), generated in {workload.seconds:.1f}s")
        (work / "cardpay").mkdir()
        ours = run_cardpay(workload, work / "cardpay")
        print(f"cardpay: {ours.rows:,} events in {ours.seconds:.1f}s = "
              f"{ours.events_per_second:,.0f} events/s")
        (work / "ponder").mkdir()
        ponder = run_ponder(node.rpc_url, workload, work / "ponder")
        print(f"ponder:  {ponder.rows:,} events in {ponder.seconds:.1f}s = "
              f"{ponder.events_per_second:,.0f} events/s")
        print(f"ratio cardpay / ponder: {ours.events_per_second / ponder.events_per_second:.2f}x")


if __name__ == "__main__":
    main()
