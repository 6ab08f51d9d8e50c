#!/usr/bin/env python3
"""Record a small card scenario on a fresh local Anvil as a replayable fixture directory.

Deploys the local replicas (EURe v2 + v1 frontend, USDCe, cardholder Safes with Roles modules),
makes card spends in both tokens, a few single refunds and one batched refund, then writes
``<out-dir>/<name>/``:

- ``logs.jsonl``: one ``eth_getLogs`` result object per line, from a single call over the whole
  range (deploy block .. head) with the listener's own filter: the `local` preset's addresses
  (spender module, tokens, v1 mirrors) and topics ``[[Spend, Transfer]]``;
- ``blocks.jsonl``: ``eth_getBlockByNumber(n, false)`` of every block holding a log, reduced to
  number, hash, parentHash and timestamp;
- ``deployment.json``: ``LocalDeployment.to_dict()``, the file ``--preset local`` reads.

    python tools/record_local_run.py basic     # -> anvil-fixtures/local/basic/
    cardpay replay anvil-fixtures/local/basic --preset local

Amounts and cardholders follow ``--seed``; block hashes and timestamps come from Anvil's clock,
so two recordings differ in those. Anvil listens on 127.0.0.1 and is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cardpay.devstack.anvil import AnvilNode
from cardpay.devstack.local_chain import LocalChain, LocalDeployment
from listener.presets import local_config
from listener.rpc import HttpJsonRpc

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "anvil-fixtures" / "local"
LOG_FIELDS = ("address", "topics", "data", "blockNumber", "blockHash", "transactionHash",
              "transactionIndex", "logIndex", "removed")  # fmt: skip
BLOCK_FIELDS = ("number", "hash", "parentHash", "timestamp")


@dataclass(frozen=True)
class Scenario:
    """What was sent (base units); cardholders are indexes into the deployment's."""

    spends: list[tuple[str, int, int]]
    refunds: list[tuple[str, int, int]]
    batch_token: str
    batch: list[tuple[int, int]]


def plan(seed: int, spends: int, cardholders: int) -> Scenario:
    """Spends of 1.00-250.00 in EURe or USDCe; three single refunds (two EURe, one USDCe) and a
    four-leg EURe batch, each a part of an earlier spend of the same cardholder and token."""
    rng = random.Random(seed)
    decimals = {"EURe": 18, "USDCe": 6}
    planned: list[tuple[str, int, int]] = []
    for i in range(spends):
        symbol = "EURe" if i % 5 < 3 else "USDCe"
        cents = rng.randint(100, 25_000)
        planned.append((symbol, rng.randrange(cardholders), cents * 10 ** (decimals[symbol] - 2)))

    def partial(symbol: str, taken: set[int]) -> tuple[int, int]:
        index = rng.choice([i for i, s in enumerate(planned) if s[0] == symbol and i not in taken])
        taken.add(index)
        _, holder, amount = planned[index]
        return holder, amount * rng.randint(10, 100) // 100

    taken: set[int] = set()
    refunds = [(s, *partial(s, taken)) for s in ("EURe", "USDCe", "EURe")]
    batch = [partial("EURe", taken) for _ in range(4)]
    return Scenario(planned, refunds, "EURe", batch)


def run_scenario(chain: LocalChain, scenario: Scenario) -> None:
    chain.spend_many(scenario.spends)
    for symbol, holder, amount in scenario.refunds:
        chain.refund(symbol, holder, amount)
    chain.refund_batch(scenario.batch_token, scenario.batch)


def fetch(
    rpc_url: str, deployment: LocalDeployment
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(logs, block headers) from the deploy block to the head, as the listener would read them."""
    config = local_config(deployment.to_dict())
    rpc = HttpJsonRpc(rpc_url)
    try:
        head = int(rpc.call("eth_blockNumber", []), 16)
        raw_logs: list[dict[str, Any]] = rpc.call("eth_getLogs", [{
            "fromBlock": hex(deployment.deployed_at_block),
            "toBlock": hex(head),
            "address": config.log_addresses,
            "topics": [config.log_topics],
        }])  # fmt: skip
        logs = [{k: log[k] for k in LOG_FIELDS if k in log} for log in raw_logs]
        numbers = sorted({int(log["blockNumber"], 16) for log in logs})
        blocks = []
        for number in numbers:
            block = rpc.call("eth_getBlockByNumber", [hex(number), False])
            blocks.append({k: block[k] for k in BLOCK_FIELDS})
    finally:
        rpc.close()
    return logs, blocks


def _jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, separators=(",", ":")) + "\n")


def record(
    target: Path, *, seed: int = 1, spends: int = 20, cardholders: int = 4
) -> dict[str, int]:
    """Run the scenario on a fresh Anvil and write the three files into ``target``."""
    scenario = plan(seed, spends, cardholders)
    with AnvilNode() as node:
        chain = LocalChain(node.rpc_url)
        deployment = chain.deploy(cardholders)
        run_scenario(chain, scenario)
        logs, blocks = fetch(node.rpc_url, deployment)
    target.mkdir(parents=True, exist_ok=True)
    _jsonl(target / "logs.jsonl", logs)
    _jsonl(target / "blocks.jsonl", blocks)
    (target / "deployment.json").write_text(
        json.dumps(deployment.to_dict(), indent=2) + "\n", encoding="utf-8", newline="\n"
    )
    return {"logs": len(logs), "blocks": len(blocks), "spends": len(scenario.spends),
            "refunds": len(scenario.refunds), "batch_legs": len(scenario.batch)}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("name", nargs="?", default="basic", help="directory name (default basic)")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=DEFAULT_OUT,
        help=f"parent directory (default {DEFAULT_OUT.relative_to(ROOT)})",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--spends", type=int, default=20)
    parser.add_argument("--cardholders", type=int, default=4)
    args = parser.parse_args(argv)
    if args.spends < 8 or args.cardholders < 1:
        parser.error("need --spends >= 8 (refunds take parts of 7 spends) and --cardholders >= 1")
    target = args.out_dir / args.name
    counts = record(target, seed=args.seed, spends=args.spends, cardholders=args.cardholders)
    print(f"wrote {target}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
