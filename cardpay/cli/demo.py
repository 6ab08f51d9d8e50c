"""`cardpay demo`: the whole card-payment lifecycle on real parts, checked across the parties.

Starts embedded PostgreSQL and Anvil, deploys the Gnosis Pay replicas, registers a card on each
Safe, and runs `cardpay api`, the card-network simulator, the sagas with the spend relayer and
the refund sender, the listener, the projector and the settlement (`cardpay.bootstrap.lifecycle`).
Then, per currency, it compares the chain's logs (read with eth-abi, apart from the listener),
the read model, the network's side of cardpay's events, the settlement batches against the
network's reports, and the ledger; any difference fails the run (exit status 1).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from cardpay.cli.errors import CommandFailed, UsageError
from cardpay.cli.options import positive_int
from cardpay.settings import Settings
from domain.money import Currency, Money

if TYPE_CHECKING:  # web3 and the dev stack load only when the demo runs: `cardpay --help` stays fast
    from cardpay.bootstrap.lifecycle import LifecycleResult


def as_json(r: LifecycleResult) -> dict[str, Any]:
    f = r.figures
    currencies: dict[str, Any] = {}
    for symbol in sorted(r.decimals):
        chain, model = f.chain.get(symbol), f.read_model.get(symbol)
        network = f.network.get(symbol, {})
        currencies[symbol] = {
            "decimals": r.decimals[symbol],
            "approved": str(network.get("approved", 0)),
            "chain": chain.as_json() if chain else None,
            "read_model": model.as_json() if model else None,
            "network": {k: str(v) for k, v in network.items() if k != "approved"},
            "owed_by_exceptions": str(f.owed.get(symbol, 0)),
            "ledger": {k: str(v) for k, v in f.ledger.get(symbol, {}).items()},
        }
    return {
        "check": "ok" if r.ok else "mismatch",
        "mismatches": r.mismatches,
        "payments": r.payments, "seed": r.seed,
        "currencies": currencies,
        "settlement": {fiat: {"statuses": row["statuses"], "net": str(row["net"]),
                              "report_net": str(row["report_net"]),
                              "settled": str(row["settled"])}
                       for fiat, row in sorted(f.settlement.items())},
        "exceptions": r.exceptions,
        "seconds": round(r.seconds, 2),
    }


def _fmt(units: int, decimals: int) -> str:
    """Exact, without trailing zeros past the second decimal (18-decimal amounts stay readable)."""
    text = f"{Money(units, Currency('X', decimals)).to_decimal():f}"
    if "." in text:
        whole, frac = text.split(".")
        frac = frac.rstrip("0").ljust(2, "0")
        text = f"{whole}.{frac}"
    return text


def print_table(r: LifecycleResult, out: TextIO) -> None:
    f = r.figures
    w = 16
    rows = ("approved", "spent on chain", "refunded on chain", "chain net", "read model net",
            "network cleared", "network returned", "owed (exceptions)", "ledger held",
            "ledger payable")
    symbols = sorted(r.decimals)
    print(f"{'':<20}" + "".join(f"{s:>{w}}" for s in symbols), file=out)
    for label in rows:
        cells = []
        for s in symbols:
            d, n = r.decimals[s], f.network.get(s, {})
            chain, model = f.chain.get(s), f.read_model.get(s)
            value = {
                "approved": n.get("approved", 0),
                "spent on chain": chain.spent if chain else 0,
                "refunded on chain": chain.refunded if chain else 0,
                "chain net": chain.net if chain else 0,
                "read model net": model.net if model else 0,
                "network cleared": n.get("cleared_on_chain", 0),
                "network returned": n.get("returned_on_chain", 0),
                "owed (exceptions)": f.owed.get(s, 0),
                "ledger held": f.ledger.get(s, {}).get("pending_holds", 0),
                "ledger payable": f.ledger.get(s, {}).get("network_payable", 0),
            }[label]
            cells.append(f"{_fmt(value, d):>{w}}")
        print(f"{label:<20}" + "".join(cells), file=out)
    print(file=out)
    for fiat, row in sorted(f.settlement.items()):
        print(f"settlement {fiat}: {', '.join(row['statuses'])}; batch net "
              f"{_fmt(row['net'], 2)}, the network's report {_fmt(row['report_net'], 2)}",
              file=out)
    if r.exceptions:
        print("open exceptions and quarantined records: " + ", ".join(
            f"{k} {v}" for k, v in sorted(r.exceptions.items())), file=out)
    print(f"{r.payments} payments (seed {r.seed}) in {r.seconds:.1f}s", file=out)
    for m in r.mismatches:
        print(f"MISMATCH {m}", file=out)
    print(f"check: {'ok' if r.ok else 'mismatch'}", file=out)


def run(settings: Settings, payments: int, seed: int, *, as_json_output: bool,
        keep: Path | None = None, fork: Any = None) -> int:
    """`fork`: a `ForkSource` (`--fork-url`): the lifecycle on an Anvil fork of that chain."""
    import contextlib
    import tempfile
    from dataclasses import replace

    from cardpay.bootstrap.lifecycle import lifecycle_stack, run_lifecycle

    def say(message: str) -> None:
        if not as_json_output:
            print(f"· {message}", file=sys.stderr, flush=True)

    with contextlib.ExitStack() as stack:
        data_dir = keep if keep is not None else Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="cardpay-demo-")))
        demo_settings = replace(settings, data_dir=data_dir, database_url=None,
                                kafka_bootstrap=None)
        say("starting embedded PostgreSQL and Anvil, deploying the contracts, registering cards"
            if fork is None else "starting embedded PostgreSQL and an Anvil fork, registering "
            "cards; spends and refunds are sent impersonated")
        s = stack.enter_context(lifecycle_stack(demo_settings,
                                                cardholders=max(4, min(40, payments // 10)),
                                                fork=fork))
        result = run_lifecycle(s, payments, seed, say=say)
    if as_json_output:
        print(json.dumps(as_json(result), indent=2))
    else:
        print_table(result, sys.stdout)
    if keep is not None:
        print(f"kept the demo database in {keep / 'pgdata'}; look at it with "
              f"`CARDPAY_DATA_DIR={keep} cardpay status` (or `payments`, `settlements`, "
              f"`sagas list`, `exceptions list`), or open psql with "
              f"`CARDPAY_DATA_DIR={keep} cardpay db shell`", file=sys.stderr)
    return 0 if result.ok else 1


def register(sub: Any) -> None:
    demo = sub.add_parser(
        "demo",
        help="run the whole card-payment lifecycle on embedded PostgreSQL + Anvil and check it",
        description="Start embedded PostgreSQL and Anvil, deploy the contracts and register a "
        "card on each Safe; send the card-network simulator's seeded workload (every message "
        "type, duplicates, reordering) to `cardpay api`; let the sagas spend on chain and "
        "refund, the listener confirm, the settlement match the network's report. Then compare "
        "per currency the chain's logs, the read model, the network's side, the settlement and "
        "the ledger. Exits 1 on any difference.",
    )
    demo.add_argument("--payments", type=positive_int, default=20,
                      help="payments in the simulator's workload, at least 1 (default 20)")
    demo.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    demo.add_argument("--json", action="store_true", help="print one JSON object")
    demo.add_argument("--keep", type=Path, default=None, metavar="DIR",
                      help="keep the demo's database (embedded PostgreSQL) in DIR, a new or empty "
                      "directory, and print how to open it (default: deleted at the end)")
    demo.add_argument("--fork-url", default=None, metavar="URL",
                      help="run on an Anvil fork of this Gnosis Chain node (gnosis preset; "
                      "needs --cards-from)")
    demo.add_argument("--fork-block", type=int, default=None, metavar="N",
                      help="the block to fork at (default: the node's head)")
    demo.add_argument("--cards-from", type=Path, default=None, metavar="FILE",
                      help="the deployment description whose cardholder Safes get the cards "
                      "(as `python -m cardpay.devstack.gnosis_standin --out` writes)")
    demo.set_defaults(run=_run)


def _fork(args: argparse.Namespace) -> Any:
    """The `ForkSource` of --fork-url/--fork-block/--cards-from (None without --fork-url)."""
    if args.fork_url is None:
        if args.fork_block is not None or args.cards_from is not None:
            raise UsageError("--fork-block and --cards-from need --fork-url")
        return None
    if args.cards_from is None:
        raise UsageError("--fork-url needs --cards-from FILE: the cardholder Safes to use")
    if args.fork_block is not None and args.fork_block < 0:
        raise UsageError(f"--fork-block must be >= 0, got {args.fork_block}")
    from cardpay.bootstrap.lifecycle import ForkSource
    from cardpay.devstack.local_chain import LocalDeployment

    try:
        deployment = LocalDeployment.from_dict(json.loads(args.cards_from.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"--cards-from {args.cards_from}: not a deployment description "
                         f"({type(exc).__name__}: {exc})") from None
    return ForkSource(args.fork_url, deployment, args.fork_block)


def _run(settings: Settings, args: argparse.Namespace) -> int:
    keep: Path | None = args.keep
    if keep is not None:
        keep = keep.expanduser().resolve()
        if keep.exists() and (not keep.is_dir() or any(keep.iterdir())):
            raise UsageError(f"--keep {keep}: give a new or empty directory (it is "
                             f"{'not a directory' if not keep.is_dir() else 'not empty'})")
    from cardpay.devstack.anvil import AnvilHarnessError
    from cardpay.devstack.artifacts import ArtifactError

    fork = _fork(args)
    try:
        return run(settings, args.payments, args.seed, as_json_output=args.json, keep=keep,
                   fork=fork)
    except (AnvilHarnessError, ArtifactError) as exc:  # their messages say what to install
        raise CommandFailed(f"the local chain could not start: {exc}") from exc
    except TimeoutError as exc:
        raise CommandFailed(f"the lifecycle did not finish: {exc}") from exc
