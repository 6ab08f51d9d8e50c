"""`cardpay network simulate`: play the card network against a running cardpay API.
`cardpay network sweep`: run the network's timers (lapsed holds, clearings parked too long).

`simulate` sends a seeded workload of every network message (authorizations first, in order, then the
asynchronous messages, duplicated and reordered as asked, and the network's stand-in declines
of approvals it treats as answered too late), signed with the network's webhook
secret, and compares every authorization answer with the simulator's own oracle. Exit status 1
when an answer differed, a repeat got another answer, or a message was not accepted.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from datetime import date
from pathlib import Path
from typing import Any

from cardpay.cli.errors import CommandFailed, UsageError
from cardpay.cli.options import positive_float, positive_int
from cardpay.cli.output import Column, print_json, print_table
from cardpay.settings import Settings


def fraction(text: str) -> float:
    """A share of the messages, 0 to 1 (0.1: one in ten)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {text}")
    return value


def iso_day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from None


def register(sub: Any) -> None:
    parser = sub.add_parser("network", help="play the card network (simulator); run its "
                            "timers (sweep)", description=__doc__)
    actions = parser.add_subparsers(dest="network_command", required=True, metavar="ACTION")
    sim = actions.add_parser(
        "simulate", help="send a seeded workload of every network message to a running API",
        description="Send PAYMENTS seeded payments (authorizations, advices, increments, "
        "reversals, expiries, clearings, financial authorizations, force posts, returns, return "
        "reversals and the daily settlement report) to the API, signed with the network's "
        "secret, and check every authorization answer against the simulator's oracle. The same "
        "seed, day and answers give byte-identical bodies; use another seed for another run "
        "against the same database (the same ids are replays).")
    sim.add_argument("--api", default=None, metavar="URL",
                     help="the API's base URL (default http://CARDPAY_API_HOST:CARDPAY_API_PORT)")
    sim.add_argument("--payments", type=positive_int, default=100, metavar="N",
                     help="how many payments (scenarios) to play (default 100)")
    sim.add_argument("--seed", type=int, default=1, metavar="S",
                     help="the workload's seed (default 1)")
    sim.add_argument("--duplicates", type=fraction, default=0.0, metavar="P",
                     help="send this share of the messages twice, same webhook id and body "
                     "(default 0)")
    sim.add_argument("--reorder", type=fraction, default=0.0, metavar="P",
                     help="move this share of the asynchronous messages out of order, within "
                     "what the network may do (default 0)")
    sim.add_argument("--late-answers", type=fraction, default=0.0, metavar="P",
                     help="treat this share of cardpay's approvals as answered after the "
                     "network's deadline: the network stands in, declines, and sends an "
                     "advice saying so (default 0)")
    sim.add_argument("--cards", type=Path, default=None, metavar="FILE",
                     help="the cards to use, as `cardpay cards list --json` writes them "
                     "(default: read the card registry from the database)")
    sim.add_argument("--secret", default=None, metavar="WHSEC",
                     help="the network's whsec_... secret (default: the first of "
                     "CARDPAY_WEBHOOK_SECRETS)")
    sim.add_argument("--day", type=iso_day, default=None, metavar="YYYY-MM-DD",
                     help="the network day the authorizations fall on (default today, UTC)")
    sim.add_argument("--out", type=Path, default=None, metavar="DIR",
                     help="write sent.jsonl, expected.json and summary.json here")
    sim.add_argument("--timeout", type=positive_float, default=10.0, metavar="SECONDS",
                     help="per request (default 10); 5xx and no answer are retried")
    sim.add_argument("--json", action="store_true", help="print the summary as JSON")
    sim.set_defaults(run=simulate_command)
    sweep = actions.add_parser(
        "sweep", help="release lapsed authorization holds; raise exceptions for clearings "
        "parked too long",
        description="Run the card network's timers, which no message triggers: every "
        "authorization hold past its validity (7 days; 30 for MCC 3501-3999, 7011, 7512) is "
        "released in the ledger and recorded as expired on its payment; every clearing parked "
        "longer than CARDPAY_PARKED_CLEARING_TIMEOUT (default 72h) without its authorization "
        "becomes one exception (`cardpay quarantine`, reason parked_clearing_unmatched), "
        "resolved by a later sweep if the authorization arrives. `cardpay api` already runs "
        "this every CARDPAY_SWEEP_INTERVAL_S seconds; running both is safe (sweeps take turns).")
    sweep.add_argument("--once", action="store_true",
                       help="sweep once and exit (default: sweep every --interval seconds "
                       "until Ctrl-C)")
    sweep.add_argument("--interval", type=positive_float, default=None, metavar="S",
                       help="seconds between sweeps (default CARDPAY_SWEEP_INTERVAL_S, 60)")
    sweep.add_argument("--json", action="store_true",
                       help="print each sweep's result as one JSON object per line")
    sweep.set_defaults(run=sweep_command)


def api_url(text: str) -> str:
    import httpx

    try:
        url = httpx.URL(text)
    except (httpx.InvalidURL, TypeError, ValueError):
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise UsageError(f"--api {text!r} is not an http(s) URL (e.g. http://127.0.0.1:8080)")
    return text.rstrip("/")


def secret_of(settings: Settings, given: str | None) -> str:
    from cardpay.api.signatures import secret_key

    secret = given or (settings.webhook_secrets[0] if settings.webhook_secrets else None)
    if not secret:
        raise UsageError("no webhook secret: give --secret whsec_... or set "
                         "CARDPAY_WEBHOOK_SECRETS (the API's secret)")
    try:
        if not secret.startswith("whsec_"):
            raise ValueError("a webhook secret starts with whsec_")
        secret_key(secret)
    except ValueError as exc:
        raise UsageError(f"--secret: {exc}") from None
    return secret


def registry_cards(settings: Settings) -> list[Any]:
    """The registry as `cardpay cards list --json` prints it (the same code writes it)."""
    from cardpay.cli import cards

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cards.list_command(settings, argparse.Namespace(format="json"))
    records: list[Any] = json.loads(out.getvalue())
    return records


def simulate_command(settings: Settings, args: argparse.Namespace) -> int:
    import httpx

    from cardpay.cli.progress import Progress
    from cardpay.devstack.network_simulator import (
        CardsFileError,
        HttpSender,
        SimulatorError,
        card_from_record,
        load_cards,
        simulate,
    )

    api = api_url(args.api or f"http://{settings.api_host}:{settings.api_port}")
    secret = secret_of(settings, args.secret)
    try:
        if args.cards is not None:
            cards = load_cards(args.cards)
        else:
            cards = [card_from_record(r, n) for n, r in enumerate(registry_cards(settings), 1)]
    except CardsFileError as exc:
        raise UsageError(str(exc)) from None
    if not cards:
        raise UsageError("no cards to use: register some (`cardpay cards add`) or give --cards")
    with httpx.Client(timeout=args.timeout) as client:
        try:
            client.get(f"{api}/healthz")
        except httpx.TransportError as exc:
            raise CommandFailed(f"cannot reach the API at {api} ({type(exc).__name__}: {exc}); "
                                "is `cardpay api` running there?") from None
        bar = Progress("simulate", unit="requests")
        try:
            run = simulate(cards, payments=args.payments, seed=args.seed,
                           sender=HttpSender(client, api, secret), duplicates=args.duplicates,
                           reorder_fraction=args.reorder, late_answers=args.late_answers,
                           day=args.day,
                           progress=lambda done, total: bar.update(done, total))
        except SimulatorError as exc:
            raise CommandFailed(str(exc)) from None
        finally:
            bar.close()
    if args.out is not None:
        run.write(args.out)
    summary = run.summary()
    if args.json:
        print_json(summary)
    else:
        print_summary(summary, args.out)
    return 0 if run.ok else 1


COLUMNS = [Column("currency", "currency"),
           Column("requests", "auth requests", "right"),
           Column("approved", "approved", "right"),
           Column("approved_amount", "approved amount", "right"),
           Column("declined", "declined", "right"),
           Column("cleared", "cleared", "right"),
           Column("reversed", "reversed", "right"),
           Column("returned", "returned", "right"),
           Column("net", "net", "right")]
"""Amounts in minor units of the currency (cents)."""


def print_summary(summary: dict[str, Any], out: Path | None) -> None:
    records = [{"currency": code, "requests": t["authorization_requests"],
                "approved": t["approved"]["count"], "approved_amount": t["approved"]["amount"],
                "declined": t["declined"]["count"], "cleared": t["cleared"]["amount"],
                "reversed": t["reversed"]["amount"], "returned": t["returned"]["amount"],
                "net": t["net"]} for code, t in summary["currencies"].items()]
    print_table(COLUMNS, records, title="expected (minor units)")
    print(f"{summary['requests']} requests ({summary['duplicates_sent']} repeats, "
          f"{summary['reordered']} reordered, {summary['answered_late']} approvals answered "
          f"late, {summary['retried']} retried); statuses "
          + ", ".join(f"{k}: {v}" for k, v in summary["statuses"].items()))
    verdict = "every answer as expected" if summary["ok"] else (
        f"{summary['mismatches']} authorization answers differ from the oracle, "
        f"{summary['duplicate_differences']} repeats answered differently, "
        f"{summary['refused']} messages not accepted")
    print(verdict + ("" if out is None else f"; details in {out}"))


def sweep_command(settings: Settings, args: argparse.Namespace) -> int:
    import time

    from cardpay.bootstrap import database
    from cardpay.bootstrap.network_sweep import build_sweep

    if args.once and args.interval is not None:
        raise UsageError("--interval is for repeated sweeps; drop it or drop --once")
    interval = args.interval if args.interval is not None else settings.sweep_interval_s
    if not args.once and interval <= 0:
        raise UsageError("CARDPAY_SWEEP_INTERVAL_S is 0 (sweeps off): give --interval S, "
                         "or --once")
    with database(settings) as engine:
        sweep = build_sweep(settings, engine)
        if args.once:
            return report_sweep(sweep.run(), args.json)
        while True:
            try:
                report_sweep(sweep.run(), args.json)
            except Exception as exc:  # as the API's loop: a failed sweep waits for the next
                print(f"cardpay network sweep: sweep failed ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0] if str(exc) else ''}); retrying in "
                      f"{interval:g} s", file=sys.stderr, flush=True)
            time.sleep(interval)


def report_sweep(result: Any, as_json: bool) -> int:
    """Print one sweep's result; 1 when holds were left for the next sweep."""
    print(json.dumps(result.as_json()) if as_json else describe_sweep(result), flush=True)
    return 1 if result.failures else 0


def describe_sweep(result: Any) -> str:
    """One line per sweep: what changed, and what is left for the next one."""
    line = (f"network sweep: {result.holds_expired} holds expired, "
            f"{len(result.exceptions_raised)} parked clearings raised as exceptions, "
            f"{len(result.exceptions_resolved)} resolved")
    if result.exceptions_raised:
        line += f" (raised: {', '.join(result.exceptions_raised)})"
    if result.failures:
        line += f"; {len(result.failures)} holds left for the next sweep: {result.failures[0]}"
    return line
