"""`cardpay run`: the whole stack in one command, each part its own supervised process
(`cardpay.bootstrap.run`)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from cardpay.cli.errors import CommandFailed, UsageError
from cardpay.settings import Settings

DESCRIPTION = """\
Start the whole stack and keep it running until Ctrl-C or SIGTERM:

  node        CARDPAY_RPC_URL if set, else a local Anvil whose chain is kept in
              $CARDPAY_DATA_DIR/anvil-state.json (it comes back on the next run)
  database    CARDPAY_DATABASE_URL if set, else the embedded PostgreSQL in CARDPAY_DATA_DIR
  replicas    the Gnosis Pay replicas from $CARDPAY_DATA_DIR/local-deployment.json, deployed
              there first (with one EURe card per cardholder Safe) when they are not on the node
  processes   cardpay listen        (metrics on --metrics-port)
              cardpay sagas run     (the sagas, the spend relayer and the refund sender;
                                    metrics on --metrics-port + 3)
              cardpay project       (metrics on --metrics-port + 1)
              cardpay api           (--port; /healthz, /metrics, the finance page /finance)
              cardpay relay         only with CARDPAY_KAFKA_BOOTSTRAP (metrics on
                                    --metrics-port + 2); the feeds then read Kafka, else the
                                    PostgreSQL event log

Dev defaults, each said at start, for settings left unset: CARDPAY_RELAYER_KEY and
CARDPAY_SETTLEMENT_KEY are Anvil's well-known dev accounts 1 and 0 (a local node only);
CARDPAY_WEBHOOK_SECRETS is a secret generated once into $CARDPAY_DATA_DIR/dev-webhook-secret;
CARDPAY_NETWORK_ADVICE_URL is a local endpoint that records the reversal advices. Every other
CARDPAY_* variable reaches the processes unchanged (see `cardpay --help`).

Fork mode (--fork-url URL [--fork-block N] [--from-block N] [--cards-from FILE]): the node is
an Anvil fork of URL, a Gnosis Chain node (chain 100), started here; no replica is deployed
(the gnosis preset names the mainnet contracts); spends and refunds are sent as the accounts
the contracts expect, impersonated on the fork (CARDPAY_TX_SIGNER=impersonate); the listener
starts after the fork block unless --from-block says earlier (history served through the fork).

Each process's output is copied to stderr behind its name. A process that exits is restarted
after 0.5 s, doubling up to 30 s while it keeps failing; one that exits --max-restarts times
within 60 s stops the whole stack (exit status 1) with a line naming it. Once the API and
every metrics endpoint answer (and every process runs), one line on stdout names the URLs.
Ctrl-C or SIGTERM: every process gets SIGTERM, SIGKILL after --grace seconds; then the
database and the node stop (exit status 0); killed with SIGKILL, the kernel stops the processes
and the node for it. A port in use or a node that does not answer is one line, exit status 1.
`cardpay --debug run` also runs every process with --debug (tracebacks, not one-line errors)."""


def register(sub: Any) -> None:
    run = sub.add_parser(
        "run", help="run the whole stack (node, database, listener, sagas, projector, API), "
        "supervised", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--port", type=int, default=None,
                     help="the API's TCP port (default CARDPAY_API_PORT, 8080; 0: a free one)")
    run.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                     help="the listener's metrics port; the projector's is PORT + 1, the "
                     "relay's PORT + 2, the saga worker's PORT + 3 (default 9464; 0: free ones)")
    run.add_argument("--cardholders", type=int, default=5, metavar="N",
                     help="cardholder Safes when the replicas are deployed (default 5)")
    run.add_argument("--grace", type=float, default=10.0, metavar="SECONDS",
                     help="how long stopping processes get before SIGKILL (default 10)")
    run.add_argument("--max-restarts", type=int, default=5, metavar="N",
                     help="stop the stack when one process exits N times within 60 s "
                     "(default 5; 0: restart for ever, e.g. under a harness that kills "
                     "processes on purpose)")
    fork = run.add_argument_group(
        "fork mode", "run against an Anvil fork of Gnosis Chain (the gnosis preset; spends and "
        "refunds sent as the accounts the contracts expect, impersonated; README, Fork mode)")
    fork.add_argument("--fork-url", default=None, metavar="URL",
                      help="a Gnosis Chain JSON-RPC URL (chain 100) to fork")
    fork.add_argument("--fork-block", type=int, default=None, metavar="N",
                      help="the block to fork at (default: the node's head)")
    fork.add_argument("--from-block", type=int, default=None, metavar="N",
                      help="the listener's first block: earlier than the fork block backfills "
                      "history through the fork (default: the first block after the fork's)")
    fork.add_argument("--cards-from", type=Path, default=None, metavar="FILE",
                      help="register a card on each cardholder Safe of this deployment "
                      "description (as `python -m cardpay.devstack.gnosis_standin --out` writes)")
    run.set_defaults(run=run_command)


def fork_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """The fork-mode options, checked (None without --fork-url)."""
    if args.fork_url is None:
        for option in ("fork_block", "from_block", "cards_from"):
            if getattr(args, option, None) is not None:
                raise UsageError(f"--{option.replace('_', '-')} needs --fork-url")
        return None
    for option in ("fork_block", "from_block"):
        value = getattr(args, option, None)
        if value is not None and value < 0:
            raise UsageError(f"--{option.replace('_', '-')} must be >= 0, got {value}")
    return {"url": args.fork_url, "block": args.fork_block,
            "from_block": getattr(args, "from_block", None), "cards_from": args.cards_from}


def run_command(settings: Settings, args: argparse.Namespace) -> int:
    if args.port is not None and not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be a TCP port (0-65535), got {args.port}")
    if args.metrics_port is not None and not (args.metrics_port == 0
                                              or 1 <= args.metrics_port <= 65532):
        raise UsageError(f"--metrics-port must be 0 or a TCP port (1-65532), got "
                         f"{args.metrics_port}")
    if args.cardholders < 1:
        raise UsageError(f"--cardholders must be at least 1, got {args.cardholders}")
    if not math.isfinite(args.grace) or args.grace < 0:
        raise UsageError(f"--grace must be a number of seconds >= 0, got {args.grace}")
    if args.max_restarts < 0:
        raise UsageError(f"--max-restarts must be 0 or more, got {args.max_restarts}")
    fork = fork_options(args)
    from cardpay.bootstrap.run import Fork, RunOptions, RunRefused, run
    from cardpay.runtime.processes import RestartPolicy

    flags = (("--debug",) if args.debug else ()) + (("-v",) if args.verbose else ())
    options = RunOptions(api_port=args.port, metrics_port=args.metrics_port,
                         cardholders=args.cardholders, grace=args.grace, flags=flags,
                         policy=RestartPolicy(max_restarts=args.max_restarts),
                         fork=Fork(**fork) if fork else None)
    try:
        return run(settings, options)
    except RunRefused as exc:
        raise CommandFailed(str(exc)) from exc
