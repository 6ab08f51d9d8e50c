"""`cardpay listener reset [NAME] [--from-block N]`: start a listener over, retracting what it indexed.

For a listener whose node now serves another chain (a restarted dev node: same chain id, new
genesis) or after a reorg deeper than the kept window. Every payment effect (spend, refund) of the
blocks forgotten is retracted, so the dead chain's payments end retracted in the read model and
never mix with the live chain's; the cursor and the stored chain identity are deleted, so the next
`cardpay backfill --from-block N` indexes the chain the node serves now. Stop the listener first.
"""

from __future__ import annotations

import argparse
from typing import Any

from cardpay.cli.errors import CommandFailed, UsageError
from cardpay.settings import Settings


def register(sub: Any) -> None:
    group = sub.add_parser("listener", help="listener administration (reset after a chain "
                           "restart or a reorg deeper than the kept window)")
    actions = group.add_subparsers(dest="listener_command", required=True, metavar="ACTION")
    reset = actions.add_parser(
        "reset", help="retract the listener's payments from a block on and delete its cursor",
        description="Retract every spend and refund the listener indexed at or above "
        "--from-block (default: everything it indexed), delete its classified activity, cursor, "
        "kept block hashes and chain identity. Then index again with "
        "`cardpay backfill --from-block N`.")
    reset.add_argument("name", nargs="?", default=None,
                       help="listener name (default CARDPAY_LISTENER_NAME, i.e. main)")
    reset.add_argument("--from-block", type=int, default=None,
                       help="first block to forget (default: the first block it indexed)")
    reset.set_defaults(run=reset_command)


def reset_command(settings: Settings, args: argparse.Namespace) -> int:
    from cardpay.bootstrap import database
    from cardpay.bootstrap.listen import ResetRefused, WrongChain, reset_listener

    if args.from_block is not None and args.from_block < 0:
        raise UsageError(f"--from-block must be >= 0, got {args.from_block}")
    name = args.name or settings.listener_name
    with database(settings) as engine:
        try:
            report = reset_listener(settings, engine, name, from_block=args.from_block)
        except WrongChain as exc:
            raise CommandFailed(str(exc)) from None
        except ResetRefused as exc:
            raise UsageError(str(exc)) from None
    print(f"listener {name!r} reset: retracted {report.retracted} payment effects in "
          f"{report.blocks} blocks from block {report.from_block}; cursor and chain identity "
          f"deleted. Index again with `cardpay backfill --from-block {report.from_block}`")
    return 0
