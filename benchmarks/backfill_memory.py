"""Memory during a long backfill: `cardpay backfill` over ~1,000,000 logs, RSS sampled throughout.

    python -m benchmarks.backfill_memory [--events 500000]

A card event is two logs in the listener's filter (Spend + Transfer), three in EURe (the v1
frontend repeats the Transfer), so 500,000 events are well over 1,000,000 logs. The backfill
runs as its own process against a real Anvil node and embedded PostgreSQL; its resident set size is
sampled every 0.2 s and reported at each tenth of the work, with the peak. Flat means the last
tenths are no higher than the first: memory does not grow with the number of logs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from sqlalchemy import select

from benchmarks.local_stack import local_stack
from benchmarks.machine import describe
from benchmarks.workload import generate
from cardpay.devstack.anvil import AnvilNode
from cardpay.postgres.schema import chain_cursor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--events-per-tx", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cardpay-mem-") as tmp, AnvilNode() as node:
        work = Path(tmp)
        workload = generate(node.rpc_url, args.events, events_per_tx=args.events_per_tx)
        print(describe())
        logs = sum(t.count * (3 if workload.deployment.token(sym).mirror else 2)
                   for sym, t in workload.per_token.items())
        print(f"workload: {workload.events:,} card events = {logs:,} logs in "
              f"{workload.blocks:,} blocks, generated in {workload.seconds:.0f}s")
        with local_stack(workload, work) as local:
            engine, env = local.engine, local.env
            first, last = workload.start_block, workload.head_block
            started = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-m", "cardpay.cli.main", "backfill", "--preset", "local",
                 "--rpc-url", node.rpc_url, "--from-block", str(first), "--to-block", str(last)],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            process = psutil.Process(proc.pid)
            samples: list[tuple[float, int]] = []  # (fraction done, rss bytes)
            while proc.poll() is None:
                try:
                    rss = process.memory_info().rss
                except psutil.NoSuchProcess:
                    break
                with engine.connect() as conn:
                    cursor = conn.execute(select(chain_cursor.c.block_number)).scalar()
                done = 0.0 if cursor is None else (int(cursor) - first + 1) / (last - first + 1)
                samples.append((done, rss))
                time.sleep(0.2)
            seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"backfill failed with exit status {proc.returncode}")
        print(f"backfill: {logs:,} logs in {seconds:.0f}s = {logs / seconds:,.0f} logs/s")
        mib = 1024 * 1024
        for tenth in range(1, 11):
            window = [rss for done, rss in samples if (tenth - 1) / 10 <= done < tenth / 10 + 1e-9]
            if window:
                print(f"  {tenth * 10:3d}% done: RSS max {max(window) / mib:7.1f} MiB")
        print(f"peak RSS: {max(rss for _, rss in samples) / mib:.1f} MiB")


if __name__ == "__main__":
    main()
