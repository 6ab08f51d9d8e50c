"""`python -m tests.chaos --seed S --duration D [--payments N] [--dir DIR]`: one seeded chaos
run of the whole stack; prints each fault as it is applied and a JSON summary at the end; exit
status 0 when every invariant holds, 1 otherwise (the problems are in the summary)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tests.chaos.harness import ChaosOptions, run_chaos
from tests.chaos.schedule import KINDS


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--duration", type=float, default=120.0,
                        help="seconds of faults (default 120)")
    parser.add_argument("--payments", type=int, default=None,
                        help="payments in the workload (default: 2 per second of duration)")
    parser.add_argument("--cardholders", type=int, default=20)
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"comma-separated fault kinds (default all: {','.join(KINDS)}); "
                        "none: a calm run, the baseline")
    parser.add_argument("--late-answers", type=float, default=0.05, metavar="P",
                        help="share of approvals the network treats as answered too late "
                        "(stand-in decline advised; default 0.05)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the run keeps its data and processes.log (default a temp dir)")
    args = parser.parse_args(argv)
    kinds = tuple(k for k in args.kinds.split(",") if k and k != "none")
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        parser.error(f"unknown fault kinds {unknown}; known: {', '.join(KINDS)}")
    directory = args.dir
    if directory is None:  # reachable by the embedded server's own user when run as root
        directory = Path(tempfile.mkdtemp(prefix="cardpay-chaos-"))
        directory.chmod(0o755)
    payments = args.payments or max(50, int(args.duration * 2))
    print(f"chaos: seed {args.seed}, {payments} payments, data in {directory}", flush=True)
    report = run_chaos(ChaosOptions(args.seed, args.duration, payments, directory,
                                    cardholders=args.cardholders, kinds=kinds,
                                    late_answers=args.late_answers),
                       say=lambda line: print(f"chaos: {line}", flush=True))
    print(json.dumps(report.summary(), indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
