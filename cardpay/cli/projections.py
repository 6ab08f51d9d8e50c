"""`cardpay projections reset NAME [--republish]`: rebuild a projector's read model from scratch."""

from __future__ import annotations

import argparse
from typing import Any

from cardpay.cli.errors import CommandFailed, UsageError
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
