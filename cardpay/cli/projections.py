"""`cardpay projections reset|rebuild|verify NAME`: a projector's read models built again.

`reset` empties them (the projector rebuilds them in place, the read side is empty meanwhile);
`rebuild` builds them again beside the live ones while the projector keeps running, compares, and
swaps; `verify` builds and compares without swapping."""

from __future__ import annotations

import argparse
from typing import Any

from cardpay.cli.errors import CommandFailed, UsageError
from cardpay.cli.options import positive_int
from cardpay.settings import Settings

RESET_HELP = """\
Delete the read-model rows projector NAME owns, its stored feed positions, the Kafka topic
identity stored with them and its quarantined records, in one transaction. The next
`cardpay project` rebuilds the read model from the start of the feed.

Use it when `cardpay project` stops because the Kafka topic was recreated, truncated, or no
longer holds the stored offsets. Stop `cardpay project` first (the reset refuses to run under
it).

With Kafka, the rebuild needs every event in the topic. A recreated or truncated topic does not
have them: add --republish, which marks every outbox row unpublished so that `cardpay relay`
sends the whole history again (the outbox keeps every event; consumers drop the events they
have already applied). Then run `cardpay relay` and `cardpay project`.

Without Kafka the feed is the PostgreSQL event log, which always holds every event.
"""


REBUILD_HELP = """\
Build projector NAME's read models again from the start of the feed into shadow tables, while
`cardpay project` keeps running and the read side keeps answering. When the rebuild has caught
up, the live projector's next batch waits for a moment: the rebuild is brought to exactly the
live position, every table is compared by checksum, and if they are equal the shadow tables
replace the live ones in the same transaction. If they differ nothing is swapped: the command
prints the rows found on one side only and exits 1.

Use it after a change to how a read model is computed, or to prove a read model is right.
With Kafka the topic must still hold every event (see `reset --republish`).
"""

VERIFY_HELP = """\
Build projector NAME's read models again beside the live ones (as `rebuild` does) and compare
them at the same feed position, without swapping: exit 0 when equal, 1 with the differing rows
when not. The live read models are never changed.
"""


def register(sub: Any) -> None:
    projections = sub.add_parser("projections", help="manage projectors' read models",
                                 description="Manage the read models built by projectors.")
    actions = projections.add_subparsers(dest="projections_command", required=True,
                                         metavar="ACTION")
    reset = actions.add_parser(
        "reset", help="delete a projector's read model and positions so it rebuilds",
        description=RESET_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    reset.add_argument("name", metavar="NAME", help="the projector (payments)")
    reset.add_argument("--republish", action="store_true",
                       help="also mark every outbox row unpublished, so `cardpay relay` sends "
                       "the full history into the (recreated) topic")
    reset.set_defaults(run=reset_command)
    for action, summary, description in (
            ("rebuild", "build a projector's read models again beside the live ones and swap",
             REBUILD_HELP),
            ("verify", "build a projector's read models again and compare, without swapping",
             VERIFY_HELP)):
        parser = actions.add_parser(action, help=summary, description=description,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("name", metavar="NAME", help="the projector (payments)")
        parser.add_argument("--batch-size", type=positive_int, default=2000, metavar="N",
                            help="events per transaction of the rebuild (default 2000)")
        parser.add_argument("--json", action="store_true",
                            help="print the result as JSON (also the differing rows)")
        parser.set_defaults(run=rebuild_command, swap=action == "rebuild")


def reset_command(settings: Settings, args: argparse.Namespace) -> int:
    from cardpay.bootstrap import database
    from cardpay.bootstrap.project import READ_MODELS, ProjectorBusy, reset_projection

    if args.name not in READ_MODELS:
        raise UsageError(f"no projector named {args.name!r} (known: {', '.join(READ_MODELS)})")
    with database(settings) as engine:
        try:
            result = reset_projection(engine, args.name, republish=args.republish)
        except ProjectorBusy as exc:
            raise CommandFailed(str(exc)) from exc
    print(f"projector {args.name}: deleted {result.rows} read-model rows, {result.positions} "
          f"stored positions and {result.quarantined} quarantined records")
    if args.republish:
        print(f"marked {result.republished} outbox rows for publishing again; now run "
              "`cardpay relay`, then `cardpay project`")
    else:
        print("now run `cardpay project` to rebuild from the start of the feed")
    return 0


def rebuild_command(settings: Settings, args: argparse.Namespace) -> int:
    from cardpay.bootstrap import database
    from cardpay.bootstrap.project import READ_MODELS
    from cardpay.bootstrap.rebuild import RebuildError, RebuildMismatch, rebuild_projection
    from cardpay.cli.output import print_json
    from cardpay.cli.progress import Progress
    from cardpay.runtime import tune_gc

    tables = READ_MODELS.get(args.name)
    if tables is None:
        raise UsageError(f"no projector named {args.name!r} (known: {', '.join(READ_MODELS)})")
    bar = Progress(f"{'rebuilding' if args.swap else 'verifying'} {args.name}", unit="events")
    tune_gc()  # as `cardpay project`: a replay allocates per event; ~20 % less CPU measured
    with database(settings) as engine:
        try:
            result = rebuild_projection(settings, engine, args.name, tables, swap=args.swap,
                                        progress=lambda done, total: bar.update(done, total),
                                        batch_size=args.batch_size)
        except RebuildMismatch as exc:
            bar.close()
            _report(exc.result, args.json, print_json)
            raise CommandFailed(str(exc)) from None
        except RebuildError as exc:
            bar.close()
            raise CommandFailed(str(exc)) from None
    bar.close()
    _report(result, args.json, print_json)
    return 0


def _report(result: Any, as_json: bool, print_json: Any) -> None:
    if as_json:
        print_json({"name": result.name, "equal": result.equal, "swapped": result.swapped,
                    "positions": result.positions, "applied": result.applied,
                    "seconds": round(result.seconds, 3),
                    "tables": [vars(t) for t in result.tables]})
        return
    for t in result.tables:
        verdict = "equal" if t.equal else "DIFFERENT"
        print(f"{t.table}: {verdict}: live {t.rows_live} rows (md5 {t.checksum_live}), "
              f"rebuilt {t.rows_rebuilt} rows (md5 {t.checksum_rebuilt})")
        for side, rows in (("live only", t.only_live), ("rebuilt only", t.only_rebuilt)):
            for row in rows:
                print(f"  {side}: {row}")
    where = ", ".join(f"{k}={v}" for k, v in sorted(result.positions.items()))
    done = "swapped in" if result.swapped else "not swapped"
    print(f"projector {result.name}: {result.applied} events applied in "
          f"{result.seconds:.1f} s, compared at {where}: {done}")
