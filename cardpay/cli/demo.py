"""`cardpay demo`: the whole slice on real parts, checked against the chain.

Starts embedded PostgreSQL and Anvil, deploys the contracts, makes N card spends and refunds some of
them (single and batched), runs listener → event store → Postgres feed → projector, then compares the
read model's totals per currency with totals computed independently from the chain's logs.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from sqlalchemy import Engine, func, select

from cardpay.cli.errors import CommandFailed, UsageError
from cardpay.cli.options import positive_int
from cardpay.handlers.payments import PaymentService
from cardpay.postgres.schema import quarantine, rm_payments
from cardpay.settings import Settings
from domain.commands import RecordRefundSubmission, RequestRefund
from domain.money import Currency, Money
from listener.decode import SPEND_TOPIC, TRANSFER_TOPIC

if TYPE_CHECKING:  # web3 and the dev stack load only when the demo runs: `cardpay --help` stays fast
    from cardpay.bootstrap.demo import DemoStack
    from cardpay.devstack.local_chain import LocalChain, LocalDeployment


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


@dataclass
class DemoResult:
    decimals: dict[str, int]
    read_model: dict[str, Totals]
    chain: dict[str, Totals]
    quarantined: int
    seconds: float
    refunds: int
    blocks: tuple[int, int] = (0, 0)
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def as_json(self) -> dict[str, Any]:
        return {
            "check": "ok" if self.ok else "mismatch",
            "mismatches": self.mismatches,
            "currencies": {
                code: {
                    "decimals": self.decimals[code],
                    "read_model": self.read_model[code].as_json(),
                    "chain": self.chain[code].as_json(),
                }
                for code in sorted(self.decimals)
            },
            "refunds_requested": self.refunds,
            "quarantined": self.quarantined,
            "blocks": {"from": self.blocks[0], "to": self.blocks[1]},
            "seconds": round(self.seconds, 2),
        }


def chain_totals(chain: LocalChain, deployment: LocalDeployment, to_block: int) -> dict[str, Totals]:
    """Totals straight from the node's logs with eth-abi: independent of the listener's code."""
    from eth_abi.abi import decode as abi_decode

    # a Spend names the address it was spent through (EURe: the v1 frontend, as on mainnet)
    by_address = {a.lower(): t.symbol for t in deployment.tokens.values() for a in t.addresses}
    totals = {symbol: Totals() for symbol in deployment.tokens}
    span = {"fromBlock": deployment.deployed_at_block, "toBlock": to_block}
    for entry in chain.w3.eth.get_logs(
        {**span, "address": deployment.spender_module, "topics": [SPEND_TOPIC]}  # type: ignore[typeddict-item]
    ):
        asset, _account, _receiver, amount = abi_decode(
            ["address", "address", "address", "uint256"], bytes(entry["data"])
        )
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
    totals: dict[str, Totals] = {}
    with engine.connect() as conn:
        rows = conn.execute(
            select(rm_payments.c.currency, func.count(), func.sum(rm_payments.c.spent),
                   func.sum(rm_payments.c.refunded)).group_by(rm_payments.c.currency)
        )
        for currency, count, spent, refunded in rows:
            totals[currency] = Totals(int(count), int(spent or 0), int(refunded or 0))
    return totals


def _mine(chain: LocalChain, blocks: int) -> None:
    chain.w3.provider.make_request("anvil_mine", [hex(blocks)])  # type: ignore[arg-type]


def funding_shortfalls(spends: Sequence[tuple[str, int, int]],
                       available: Callable[[str, int], int]) -> dict[tuple[str, int], int]:
    """What each (token, cardholder) must still receive to afford its planned spends, given what
    it has (`available(symbol, cardholder)`); pairs that can already afford theirs are left out."""
    needed: dict[tuple[str, int], int] = {}
    for symbol, holder, units in spends:
        needed[symbol, holder] = needed.get((symbol, holder), 0) + units
    short = {}
    for (symbol, holder), total in sorted(needed.items()):
        missing = total - available(symbol, holder)
        if missing > 0:
            short[symbol, holder] = missing
    return short


class Demo:
    def __init__(self, payments: int, seed: int, progress: Callable[[str], None],
                 keep: Path | None = None) -> None:
        self.n = payments
        self.rng = random.Random(seed)
        self.say = progress
        self.keep = keep

    def run(self) -> DemoResult:
        from cardpay.bootstrap.demo import CONFIRMATIONS, demo_stack

        started = time.monotonic()
        self.say("starting embedded PostgreSQL and Anvil")
        with demo_stack(max(1, min(8, self.n)), keep=self.keep) as s:
            deployment = s.deployment
            self.say(f"deployed contracts at block {deployment.deployed_at_block}")
            spends = self._spends(deployment)
            self._fund(s.chain, deployment, spends)
            s.chain.spend_many(spends)
            self.say(f"sent {len(spends)} card spends")
            self._index(s)

            refunds = self._refund_some(s.engine, s.chain, deployment, s.payments)
            self.say(f"sent {refunds} refunds")
            self._index(s)

            head = s.listener.head() - CONFIRMATIONS
            chain_side = chain_totals(s.chain, deployment, head)
            model_side = read_model_totals(s.engine)
            with s.engine.connect() as conn:
                quarantined = int(conn.execute(select(func.count()).select_from(quarantine))
                                  .scalar_one())
        result = DemoResult(
            decimals={t.symbol: t.decimals for t in deployment.tokens.values()},
            read_model={c: model_side.get(c, Totals()) for c in deployment.tokens},
            chain=chain_side, quarantined=quarantined, seconds=time.monotonic() - started,
            refunds=refunds, blocks=(deployment.deployed_at_block, head),
        )
        for code in sorted(result.decimals):
            a, b = result.read_model[code], result.chain[code]
            if (a.payments, a.spent, a.refunded) != (b.payments, b.spent, b.refunded):
                result.mismatches.append(f"{code}: read model {a.as_json()} != chain {b.as_json()}")
        if quarantined:
            result.mismatches.append(f"{quarantined} quarantined rows (expected none)")
        return result

    def _spends(self, deployment: LocalDeployment) -> list[tuple[str, int, int]]:
        spends = []
        symbols = sorted(deployment.tokens)
        for _ in range(self.n):
            symbol = self.rng.choice(symbols)
            cents = self.rng.randint(50, 25_000)  # 0.50 to 250.00
            units = Money(cents, Currency(symbol, 2)).convert(
                Currency(symbol, deployment.tokens[symbol].decimals)).units
            spends.append((symbol, self.rng.randrange(len(deployment.cardholders)), units))
        return spends

    def _fund(self, chain: LocalChain, deployment: LocalDeployment,
              spends: Sequence[tuple[str, int, int]]) -> None:
        """Top up balances (a mint, like a Monerium top-up) and raise daily allowances wherever
        the planned spends would exceed them, so every spend of any --payments count succeeds."""
        topups = funding_shortfalls(spends, lambda sym, i: chain.balance_of(sym, i))
        for (symbol, holder), missing in topups.items():
            chain.mint(symbol, deployment.cardholders[holder], missing)
        limits = funding_shortfalls(spends, lambda sym, i: chain.allowance_left(i, sym))
        for (symbol, holder), missing in limits.items():
            chain.set_daily_allowance(holder, symbol, chain.allowance_left(holder, symbol)
                                      + missing)
        if topups or limits:
            self.say(f"topped up {len(topups)} balances and raised {len(limits)} daily limits "
                     f"for {len(spends)} spends")

    def _index(self, s: DemoStack) -> None:
        from cardpay.bootstrap.demo import CONFIRMATIONS

        _mine(s.chain, CONFIRMATIONS)
        ranges = s.listener.run_until_caught_up()
        projector = s.projector()

        async def project() -> None:
            await projector.start()
            await projector.run_until_idle()
            await projector.stop()

        asyncio.run(project())
        self.say(f"indexed {ranges} block ranges; projected {projector.applied} events")

    def _refund_some(self, engine: Engine, chain: LocalChain, deployment: LocalDeployment,
                     service: PaymentService) -> int:
        with engine.connect() as conn:
            rows = conn.execute(
                select(rm_payments.c.payment_id, rm_payments.c.account, rm_payments.c.currency,
                       rm_payments.c.decimals, rm_payments.c.spent)
                .order_by(rm_payments.c.spend_tx)
            ).all()
        chosen = [r for r in rows if self.rng.random() < 0.35]
        now = datetime.now(UTC)
        batches: dict[str, list[tuple[str, str, str, int]]] = {}
        for payment_id, account, currency, decimals, spent in chosen:
            amount = max(1, int(spent) * self.rng.randint(1, 100) // 100)
            refund_id = str(uuid.UUID(int=self.rng.getrandbits(128)))
            service.submit(RequestRefund(
                command_id=f"demo-refund-request:{refund_id}", payment_id=payment_id, at=now,
                refund_id=refund_id, amount=Money(amount, Currency(currency, decimals)),
                reason="merchant refund (demo)",
            ))
            batches.setdefault(currency, []).append((payment_id, refund_id, account, amount))
        for symbol, legs in batches.items():
            token = deployment.token(symbol).address
            singles, batched = legs[: len(legs) // 2], legs[len(legs) // 2:]
            sent = [(leg, chain.refund(symbol, leg[2], leg[3])) for leg in singles]
            if batched:
                tx = chain.refund_batch(symbol, [(leg[2], leg[3]) for leg in batched])
                sent += [(leg, tx) for leg in batched]
            for (payment_id, refund_id, account, amount), tx_hash in sent:
                service.record_refund_submission(
                    RecordRefundSubmission(
                        command_id=f"demo-refund-sent:{refund_id}", payment_id=payment_id,
                        at=now, refund_id=refund_id, tx_hash=tx_hash,
                    ),
                    recipient=account, token=token, amount=amount,
                )
        return len(chosen)


def _fmt(units: int, decimals: int) -> str:
    """Exact, without trailing zeros past the second decimal (18-decimal amounts stay readable)."""
    text = f"{Money(units, Currency('X', decimals)).to_decimal():f}"
    if "." in text:
        whole, frac = text.split(".")
        frac = frac.rstrip("0").ljust(2, "0")
        text = f"{whole}.{frac}"
    return text


def print_table(result: DemoResult, out: TextIO) -> None:
    w = 24
    header = f"{'currency':<9}{'source':<12}{'payments':>9}{'spent':>{w}}{'refunded':>{w}}{'net':>{w}}"
    print(header, file=out)
    print("-" * len(header), file=out)
    for code in sorted(result.decimals):
        d = result.decimals[code]
        for source, t in (("read model", result.read_model[code]), ("chain", result.chain[code])):
            print(f"{code:<9}{source:<12}{t.payments:>9}{_fmt(t.spent, d):>{w}}"
                  f"{_fmt(t.refunded, d):>{w}}{_fmt(t.net, d):>{w}}", file=out)
    print(file=out)
    print(f"refunds requested: {result.refunds}   quarantined: {result.quarantined}   "
          f"blocks {result.blocks[0]}..{result.blocks[1]}   {result.seconds:.1f}s", file=out)
    for m in result.mismatches:
        print(f"MISMATCH {m}", file=out)
    print(f"check: {'ok' if result.ok else 'mismatch'}", file=out)


def run(payments: int, seed: int, *, as_json: bool, keep: Path | None = None) -> int:
    import json

    def say(message: str) -> None:
        if not as_json:
            print(f"· {message}", file=sys.stderr, flush=True)

    result = Demo(payments, seed, say, keep=keep).run()
    if as_json:
        print(json.dumps(result.as_json(), indent=2))
    else:
        print_table(result, sys.stdout)
    if keep is not None:
        print(f"kept the demo database in {keep / 'pgdata'}; look at it with "
              f"`CARDPAY_DATA_DIR={keep} cardpay status` (or `payments`, `quarantine list`), "
              f"or open psql with `CARDPAY_DATA_DIR={keep} cardpay db shell`",
              file=sys.stderr)
    return 0 if result.ok else 1


def register(sub: Any) -> None:
    demo = sub.add_parser(
        "demo",
        help="run the whole slice on embedded PostgreSQL + Anvil and check it against the chain",
        description="Start embedded PostgreSQL and Anvil, deploy the contracts, make card spends "
        "and refunds, index and project them, and compare the read model's totals per currency "
        "with totals computed independently from the chain's logs. Exits 1 on a mismatch.",
    )
    demo.add_argument("--payments", type=positive_int, default=20,
                      help="card spends to make, at least 1 (default 20); balances and daily "
                      "limits are topped up to cover them")
    demo.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    demo.add_argument("--json", action="store_true", help="print one JSON object")
    demo.add_argument("--keep", type=Path, default=None, metavar="DIR",
                      help="keep the demo's database (embedded PostgreSQL) in DIR, a new or empty "
                      "directory, and print how to open it (default: deleted at the end)")
    demo.set_defaults(run=_run)


def _run(settings: Settings, args: argparse.Namespace) -> int:
    keep: Path | None = args.keep
    if keep is not None:
        keep = keep.expanduser().resolve()
        if keep.exists() and (not keep.is_dir() or any(keep.iterdir())):
            raise UsageError(f"--keep {keep}: give a new or empty directory (it is "
                             f"{'not a directory' if not keep.is_dir() else 'not empty'})")
    from cardpay.devstack.anvil import AnvilHarnessError
    from cardpay.devstack.artifacts import ArtifactError

    try:
        return run(args.payments, args.seed, as_json=args.json, keep=keep)
    except (AnvilHarnessError, ArtifactError) as exc:  # their messages say what to install
        raise CommandFailed(f"the local chain could not start: {exc}") from exc
