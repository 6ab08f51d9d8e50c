"""`cardpay replay DIR`: index a recorded chain into a fresh embedded database and report it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from cardpay.cli.errors import CommandFailed, UsageError
from cardpay.settings import Settings
from domain.money import Currency, Money

if TYPE_CHECKING:
    from cardpay.bootstrap.replay import ReplayStack
    from listener.presets import ChainConfig
    from listener.replay import ReplayResult

# The replay stack's modules (the database, the listener) are imported when a replay runs: every
# `cardpay` command imports this module to build its parser (see cardpay/cli/chain.py).


@dataclass
class ReplayReport:
    result: ReplayResult
    activity: list[dict[str, Any]]
    payments: list[dict[str, Any]]
    totals: dict[str, dict[str, dict[str, Any]]]
    decimals: dict[str, int]
    quarantined: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        return {"activity": self.activity, "totals": self.totals, "payments": self.payments,
                "quarantined": self.quarantined,
                "blocks": self.result.blocks, "logs": self.result.logs}


def preset_for(directory: Path, name: str) -> ChainConfig:
    """Observer mode: a recording has no refund submissions to match transfers against."""
    from listener.errors import ChainMismatch
    from listener.presets import load_preset

    config = dataclasses.replace(load_preset(name, directory / "deployment.json"),
                                 match_refunds=False)
    recorded = directory / "deployment.json"
    if name != "local" and recorded.is_file():
        chain_id = json.loads(recorded.read_text()).get("chain_id")
        if chain_id is not None and int(chain_id) != config.chain_id:
            raise ChainMismatch(f"{directory} is a recording of chain {chain_id} (its "
                                f"deployment.json), but the {name} preset indexes chain "
                                f"{config.chain_id}; use --preset local")
    return config


def read_report(stack: ReplayStack, result: ReplayResult, config: ChainConfig) -> ReplayReport:
    from sqlalchemy import select

    from cardpay.postgres.schema import chain_activity, quarantine
    from domain.events import PaymentSpent

    t = chain_activity
    with stack.engine.connect() as conn:
        rows = conn.execute(select(t).order_by(t.c.block_number, t.c.log_index)).all()
        bad = conn.execute(select(quarantine.c.key, quarantine.c.reason)
                           .order_by(quarantine.c.id)).all()
    with stack.uow() as uow:
        spent = [e for e in uow.events.events_of_type(PaymentSpent)
                 if isinstance(e, PaymentSpent)]
    activity = [
        {"tx_hash": r.tx_hash, "log_index": r.log_index, "block_number": r.block_number,
         "class": r.kind, "token": r.symbol, "from": r.sender, "to": r.recipient,
         "amount": str(int(r.amount)), "cardholder": r.cardholder}
        for r in rows
    ]
    payments = [
        {"payment_id": e.stream_id, "cardholder": e.account, "token": e.amount.currency.code,
         "amount": str(e.amount.units), "tx_hash": e.evidence.tx_hash}
        for e in spent
    ]
    totals: dict[str, dict[str, dict[str, Any]]] = {}
    for row in activity:
        entry = totals.setdefault(row["class"], {}).setdefault(
            row["token"], {"count": 0, "amount": "0"})
        entry["count"] += 1
        entry["amount"] = str(int(entry["amount"]) + int(row["amount"]))
    decimals = {c.code: c.decimals for c in config.tokens.values()}
    return ReplayReport(result, activity, payments, totals, decimals,
                        [{"key": k, "reason": r} for k, r in bad])


def run_replay(directory: Path, preset: str, *, show_progress: bool) -> ReplayReport:
    from cardpay.bootstrap.replay import replay_stack
    from cardpay.cli.progress import Progress
    from listener.replay import load_recording, replay

    config = preset_for(directory, preset)
    recording = load_recording(directory)
    with replay_stack(config.chain_id) as stack:
        bar = Progress("replay", unit="blocks", enabled=show_progress)
        result = replay(recording, config, stack.sink, progress=bar.update)
        bar.close()
        return read_report(stack, result, config)


def print_report(report: ReplayReport, out: TextIO) -> None:
    print(f"{'class':<12}{'token':<8}{'count':>7}{'amount':>28}", file=out)
    for kind in sorted(report.totals):
        for token, entry in sorted(report.totals[kind].items()):
            amount = Money(int(entry["amount"]), Currency(token, report.decimals.get(token, 0)))
            print(f"{kind:<12}{token:<8}{entry['count']:>7}{amount.to_decimal():>28f}", file=out)
    r = report.result
    print(f"\n{r.blocks} blocks, {r.logs} logs, {len(report.activity)} transfers classified, "
          f"{r.commands} payment commands, {len(report.quarantined)} quarantined", file=out)
    for q in report.quarantined:
        print(f"  quarantined {q['key']}: {q['reason']}", file=out)


def main(directory: Path, preset: str, as_json: bool, *, strict: bool = False) -> int:
    report = run_replay(directory, preset, show_progress=not as_json and sys.stderr.isatty())
    if as_json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print_report(report, sys.stdout)
    if strict and report.quarantined:
        raise CommandFailed(f"{len(report.quarantined)} logs quarantined (--strict)")
    return 0


def register(sub: Any) -> None:
    replay_parser = sub.add_parser(
        "replay",
        help="index a recorded chain (logs.jsonl + blocks.jsonl) into a fresh embedded database",
        description="Replay DIR/logs.jsonl (eth_getLogs results, one per line) and DIR/blocks.jsonl "
        "(eth_getBlockByNumber results) through the real listener code into a fresh embedded "
        "PostgreSQL, then print counts and totals per class and token. The local preset reads "
        "DIR/deployment.json.",
    )
    replay_parser.add_argument("directory", type=Path, metavar="DIR",
                               help="the recording: logs.jsonl, blocks.jsonl (deployment.json)")
    replay_parser.add_argument("--preset", choices=["gnosis", "local"], default="gnosis",
                               help="which addresses mean what (default gnosis: mainnet Gnosis Pay)")
    replay_parser.add_argument("--json", action="store_true",
                               help='one JSON object: "activity" (every classified transfer) and '
                               '"totals"')
    replay_parser.add_argument("--strict", action="store_true",
                               help="exit with status 1 when any log was quarantined")
    replay_parser.set_defaults(run=_run)


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from cardpay.runtime import tune_gc
    from listener.errors import ListenerError

    if not args.directory.is_dir():
        raise UsageError(f"the recording directory {args.directory} does not exist"
                         if not args.directory.exists() else f"{args.directory} is not a directory")
    tune_gc()
    try:
        return main(args.directory, args.preset, args.json, strict=args.strict)
    except (ListenerError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
