"""The backfill workload: many card events on an Anvil node, fast.

A card event is what one Gnosis Pay card spend leaves on chain: a ``Spend`` log from the spender
module and the token ``Transfer`` from the cardholder account into the settlement account (plus
the account's ``ExecutionFromModuleSuccess``). Sending one transaction per spend costs ~5 ms each
on Anvil, so the workload goes through the benchmark-only ``SpendBatcher`` contract: an enabled
module of the spender module that calls ``SpenderModule.spend`` ``events_per_tx`` times in one
transaction.
Every log still comes from the spender module and the token, exactly as in production; only the
transaction shape differs (many spends per receipt). Under Anvil's automine each batch is its own
block, so 100,000 events at 100 per transaction cover 1,000 blocks.

Everything is deterministic from the seed: tokens (EURe 18 decimals, USDCe 6 decimals), cardholders
and amounts (whole cents from 1.00 to 500.00). The cardholder accounts are minted exactly what
they will spend. After sending, the settlement account's balance of each token is checked against
the expected total, so a returned :class:`Workload` is known to be on chain.

    python -m benchmarks.workload --events 100000          # on a fresh Anvil, prints the summary
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cardpay.devstack.local_chain import (
    DEFAULT_TOKENS,
    LocalChain,
    LocalChainError,
    LocalDeployment,
    TokenSpec,
)

__all__ = ["Spend", "TokenTotals", "Workload", "WorkloadError", "generate", "plan_spends"]

DEFAULT_CARDHOLDERS = 20
DEFAULT_EVENTS_PER_TX = 50
EURE_SHARE = 0.6
"""Share of the spends made in EURe; the rest are in USDCe."""
MIN_CENTS, MAX_CENTS = 100, 50_000


class WorkloadError(RuntimeError):
    """The workload could not be generated or is not what was expected on chain."""


@dataclass(frozen=True)
class Spend:
    """One planned card spend: ``amount`` in base units of ``token``."""

    token: str
    cardholder: int
    amount: int


@dataclass(frozen=True)
class TokenTotals:
    """Expected card events of one token: how many, and their sum in base units."""

    count: int
    amount: int


@dataclass(frozen=True)
class Workload:
    """A generated workload: where it is and what an indexer must find.

    ``first_block``..``last_block`` are the blocks holding the card events; indexers should start
    at ``deployment.deployed_at_block`` (the contracts' deploy block), as a real backfill starts
    at the deploy block of what it indexes. Amounts are base units.
    """

    rpc_url: str
    seed: int
    deployment: LocalDeployment
    spend_batcher: str
    events: int
    events_per_tx: int
    transactions: int
    first_block: int
    last_block: int
    head_block: int
    per_token: Mapping[str, TokenTotals]
    seconds: float
    tx_hashes: tuple[str, ...] = field(repr=False, default=())

    @property
    def start_block(self) -> int:
        return self.deployment.deployed_at_block

    @property
    def blocks(self) -> int:
        """Number of blocks holding card events."""
        return self.last_block - self.first_block + 1

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")

    def token_address(self, symbol: str) -> str:
        return self.deployment.token(symbol).address

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (amounts as decimal strings; no tx hashes)."""
        return {
            "rpc_url": self.rpc_url,
            "seed": self.seed,
            "deployment": self.deployment.to_dict(),
            "spend_batcher": self.spend_batcher,
            "events": self.events,
            "events_per_tx": self.events_per_tx,
            "transactions": self.transactions,
            "start_block": self.start_block,
            "first_block": self.first_block,
            "last_block": self.last_block,
            "head_block": self.head_block,
            "per_token": {
                s: {"count": t.count, "amount": str(t.amount)} for s, t in self.per_token.items()
            },
            "seconds": round(self.seconds, 3),
        }


def plan_spends(events: int, seed: int = 1, cardholders: int = DEFAULT_CARDHOLDERS) -> list[Spend]:
    """The deterministic list of spends for ``events`` card events (no I/O)."""
    if events < 1:
        raise ValueError("events must be >= 1")
    if cardholders < 1:
        raise ValueError("cardholders must be >= 1")
    decimals = {t.symbol: t.decimals for t in DEFAULT_TOKENS}
    scale = {symbol: 10 ** (d - 2) for symbol, d in decimals.items()}
    rng = random.Random(seed)
    spends: list[Spend] = []
    for _ in range(events):
        token = "EURe" if rng.random() < EURE_SHARE else "USDCe"
        holder = rng.randrange(cardholders)
        cents = rng.randint(MIN_CENTS, MAX_CENTS)
        spends.append(Spend(token, holder, cents * scale[token]))
    return spends


def _totals(spends: Sequence[Spend]) -> dict[str, TokenTotals]:
    counts: dict[str, int] = {}
    amounts: dict[str, int] = {}
    for s in spends:
        counts[s.token] = counts.get(s.token, 0) + 1
        amounts[s.token] = amounts.get(s.token, 0) + s.amount
    return {t.symbol: TokenTotals(counts.get(t.symbol, 0), amounts.get(t.symbol, 0))
            for t in DEFAULT_TOKENS}  # fmt: skip


def generate(
    rpc_url: str,
    events: int,
    seed: int = 1,
    *,
    cardholders: int = DEFAULT_CARDHOLDERS,
    events_per_tx: int = DEFAULT_EVENTS_PER_TX,
    in_flight: int = 1,
    log: bool = False,
) -> Workload:
    """Deploy the replicas and the SpendBatcher on the node at ``rpc_url`` and make ``events``
    card spends, ``events_per_tx`` per transaction. With ``in_flight=1`` (the default) each
    transaction is sent once the previous one is mined, so under Anvil's automine every batch
    is a block of its own and the block layout is the same on every run.

    The node should be fresh (or at least not reuse the contracts): balances are minted exactly.
    Raises WorkloadError if the settlement account does not end up with the expected totals.
    """
    if events_per_tx < 1:
        raise ValueError("events_per_tx must be >= 1")
    started = time.perf_counter()
    spends = plan_spends(events, seed, cardholders)
    per_token = _totals(spends)

    # Mint each cardholder exactly the most that any one of them spends in that token.
    need: dict[tuple[str, int], int] = {}
    for s in spends:
        need[(s.token, s.cardholder)] = need.get((s.token, s.cardholder), 0) + s.amount
    tokens = [
        TokenSpec(t.symbol, t.name, t.decimals,
                  max((need.get((t.symbol, h), 0) for h in range(cardholders)), default=0))
        for t in DEFAULT_TOKENS
    ]  # fmt: skip

    chain = LocalChain(rpc_url, receipt_timeout=300.0)
    deployment = chain.deploy(n_cardholders=cardholders, tokens=tokens)
    batcher = chain.deploy_spend_batcher()
    _say(log, f"deployed at block {deployment.deployed_at_block}; batcher {batcher}")

    batches = [
        [(s.token, s.cardholder, s.amount) for s in spends[i : i + events_per_tx]]
        for i in range(0, len(spends), events_per_tx)
    ]
    hashes = chain.spend_batches(batcher, batches, in_flight=in_flight)
    first_block = int(chain.receipt(hashes[0])["blockNumber"], 16)
    last_block = int(chain.receipt(hashes[-1])["blockNumber"], 16)
    head_block = int(chain.w3.eth.block_number)

    # Every token's total reached the settlement account (it starts empty).
    for symbol, totals in per_token.items():
        balance = chain.balance_of(symbol, deployment.settlement_account)
        if balance != totals.amount:
            raise WorkloadError(
                f"settlement account holds {balance} {symbol} base units, expected {totals.amount}"
            )
    seconds = time.perf_counter() - started
    _say(log, f"{events} events in {len(hashes)} txs, blocks {first_block}..{last_block}, "
              f"{seconds:.1f}s")  # fmt: skip
    return Workload(
        rpc_url=rpc_url,
        seed=seed,
        deployment=deployment,
        spend_batcher=batcher,
        events=events,
        events_per_tx=events_per_tx,
        transactions=len(hashes),
        first_block=first_block,
        last_block=last_block,
        head_block=head_block,
        per_token=per_token,
        seconds=seconds,
        tx_hashes=tuple(hashes),
    )


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(f"[workload] {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    from cardpay.devstack.anvil import AnvilNode

    parser = argparse.ArgumentParser(
        description="Generate the card-event workload on a fresh Anvil."
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cardholders", type=int, default=DEFAULT_CARDHOLDERS)
    parser.add_argument("--events-per-tx", type=int, default=DEFAULT_EVENTS_PER_TX)
    args = parser.parse_args(argv)
    try:
        with AnvilNode() as node:
            workload = generate(
                node.rpc_url, args.events, args.seed, cardholders=args.cardholders,
                events_per_tx=args.events_per_tx, log=True,
            )  # fmt: skip
    except (LocalChainError, WorkloadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(workload.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
