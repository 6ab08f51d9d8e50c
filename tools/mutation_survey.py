#!/usr/bin/env python3
"""Plant one-line bugs in the money invariants, one at a time, and see whether the tests notice.

    python tools/mutation_survey.py              # every mutant, on a copy of HEAD
    python tools/mutation_survey.py --list       # names, invariants, the tests meant to catch them
    python tools/mutation_survey.py --only relay-marks-before-sending
    python tools/mutation_survey.py --worktree   # a copy of the working tree instead of HEAD

Each mutant is a (file, exact original snippet, mutated snippet) plus the invariant it breaks and
the tests that should catch it. The shared checkout is never touched: the tree is copied to a
temporary directory (`git archive`, or the tracked and untracked-not-ignored files with
`--worktree`), every snippet is checked to occur exactly once there before anything runs (the
code moves; a stale snippet fails the survey loudly instead of testing nothing), the named tests
run on the unmutated copy (the baseline: a named test that fails there, or whose file does not
import, can tell nothing, so it is left out of every mutant's run and reported), and then each
mutant gets its own copy and one pytest run with a timeout. The copy is first on the path
(PYTHONPATH and pytest's rootdir), which a probe checks before the survey starts.

Results: killed (a test failed), survived (every test passed: the invariant is unguarded), timed
out (nothing failed within the timeout: the bug was caught at best by a deadline), error (pytest
could not run, e.g. collection failed), not run (every named test was left out). Exit status 0
if every mutant was killed, 1 otherwise; the survey stops with a message if it cannot run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv" / "bin" / "python"
DEFAULT_TIMEOUT = 180.0

REORG_TESTS = (
    "tests/integration/test_reorg.py::test_reorg_at_depth_matches_a_fresh_index[1]",
    "tests/integration/test_reorg.py::test_reorg_at_depth_matches_a_fresh_index[8]",
    "tests/integration/test_reorg.py::test_refund_reorged_out_is_in_flight_again_then_confirmed_when_remined",
    "tests/integration/test_reorg.py::test_snapshot_revert_reorg_with_a_transaction_in_a_different_block",
)
FORK_SWITCH = "tests/integration/test_poller_fork_switch.py"
HANDLER_UNIT = "tests/unit/test_chain_sink_handler.py"


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    original: str
    mutated: str
    invariant: str
    tests: tuple[str, ...]
    """pytest node ids or files, fastest first (the run stops at the first failure)."""


MUTANTS: tuple[Mutant, ...] = (
    # -- the twelve of the first survey -------------------------------------------------------
    Mutant(
        "event-store-no-table-lock", "cardpay/postgres/eventstore.py",
        'self._conn.execute(text("LOCK TABLE events IN EXCLUSIVE MODE"))',
        "pass  # mutant: no table lock",
        "global positions are taken under a table lock, so a tailing reader never skips a late "
        "commit",
        ("tests/integration/test_event_store.py",),
    ),
    Mutant(
        "projector-positions-apart-from-rows", "projector/runner.py",
        "            self._apply(uow, batch)\n"
        "            uow.save_positions(self.name, positions)\n"
        "            uow.commit()",
        "            uow.save_positions(self.name, positions)\n"
        "            uow.commit()\n"
        "        with self._uow() as uow:\n"
        "            self._apply(uow, batch)\n"
        "            uow.commit()",
        "feed positions commit in the same transaction as the read-model rows they produced",
        ("tests/unit/test_projector.py", "tests/integration/test_crash_recovery.py"),
    ),
    Mutant(
        "eure-mirror-dedupe-removed", "listener/classify.py",
        "    if not config.mirrors:\n        return list(transfers)",
        "    if True:\n        return list(transfers)",
        "an EURe/GBPe v1 frontend Transfer repeating the v2 one in the same tx is counted once",
        ("tests/unit/test_listener_translate.py", "tests/integration/test_replay_gnosis.py"),
    ),
    Mutant(
        "confirmation-depth-ignored", "listener/poller.py",
        "safe = self.head() - self._confirmations",
        "safe = self.head()",
        "the listener reads only blocks `confirmations` deep",
        ("tests/integration/test_listener_pipeline.py",),
    ),
    Mutant(
        "cursor-hash-check-removed", "listener/poller.py",
        "            if here.hash != cursor.block_hash:\n"
        "                return self._recover(cursor)",
        "            if False and here.hash != cursor.block_hash:\n"
        "                return self._recover(cursor)",
        "a reorg below the cursor is detected before the next range is read",
        REORG_TESTS,
    ),
    Mutant(
        "parent-hash-check-removed", "listener/poller.py",
        "        if cursor is not None and first in headers and \\",
        "        if False and cursor is not None and first in headers and \\",
        "a range whose first block does not extend the cursor's block (the node switched branch "
        "after the cursor check) triggers recovery",
        (FORK_SWITCH, *REORG_TESTS),
    ),
    Mutant(
        "reorg-retraction-skipped", "cardpay/handlers/chain.py",
        "                if not _still_rests_on(uow, effect):\n                    continue",
        "                if True or not _still_rests_on(uow, effect):\n                    continue",
        "a spend or refund from an orphaned block is retracted",
        (HANDLER_UNIT, FORK_SWITCH, *REORG_TESTS),
    ),
    Mutant(
        "command-claim-ignored", "cardpay/handlers/chain.py",
        "        todo = [cmd for cmd in spends if cmd.command_id in fresh]",
        "        todo = list(spends)",
        "a chain command already applied (same log) is a duplicate, never applied again",
        (HANDLER_UNIT, "tests/integration/test_listener_pipeline.py",
         "tests/integration/test_concurrency.py"),
    ),
    Mutant(
        "money-currency-check-removed", "domain/money.py",
        "        if self.currency != other.currency:\n            raise CurrencyMismatch(",
        "        if False:\n            raise CurrencyMismatch(",
        "money of two currencies never adds, subtracts or compares",
        ("tests/unit/test_money.py", "tests/unit/test_payment.py"),
    ),
    Mutant(
        "refund-limit-removed", "domain/payment.py",
        "        if cmd.amount > refundable:\n            raise RefundExceedsCapture(",
        "        if False:\n            raise RefundExceedsCapture(",
        "refunds requested never exceed what was spent (less refunds already committed)",
        ("tests/unit/test_payment.py", "tests/unit/test_payment_stateful.py"),
    ),
    Mutant(
        "rpc-429-not-retried", "listener/rpc.py",
        "RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})",
        "RETRY_STATUS = frozenset({408, 425, 500, 502, 503, 504})",
        "a rate-limited request (HTTP 429) is retried in the RPC layer",
        ("tests/integration/test_rpc_retry.py",
         "tests/integration/test_rpc_faults.py::test_faults_end_with_the_complete_exact_index"
         "[rate-limits-and-5xx-faults0]"),
    ),
    Mutant(
        "range-shrinking-disabled", "listener/poller.py",
        "                if not is_range_too_large(exc) or (self.planner.at_minimum and first == last):",
        "                if True:",
        "a provider's 'range too large' refusal shrinks the eth_getLogs range instead of failing",
        ("tests/integration/test_rpc_retry.py::test_a_range_refusal_is_not_retried_by_the_client_"
         "and_the_listener_reads_smaller_ranges",
         "tests/integration/test_rpc_faults.py::test_faults_end_with_the_complete_exact_index"
         "[too-many-results-faults4]"),
    ),
    Mutant(
        "relay-marks-before-sending", "cardpay/kafka/relay.py",
        "        await self._publisher.publish(batch)\n"
        "        await asyncio.to_thread(self._mark, [m.id for m in batch])",
        "        await asyncio.to_thread(self._mark, [m.id for m in batch])\n"
        "        await self._publisher.publish(batch)",
        "an outbox row is marked published only after the publisher accepted it",
        ("tests/integration/test_relay_invariants.py", "tests/integration/test_relay.py"),
    ),
    # -- more from domain/payment.py, domain/money.py, cardpay/handlers/chain.py -----------------
    Mutant(
        "spend-above-authorization", "domain/payment.py",
        "            if cmd.amount > self.authorized:",
        "            if False:",
        "a spend never exceeds its authorization",
        ("tests/unit/test_payment.py", "tests/unit/test_payment_stateful.py"),
    ),
    Mutant(
        "clearing-above-spend", "domain/payment.py",
        "        if cmd.amount > refundable:\n            raise InvalidTransition(",
        "        if False:\n            raise InvalidTransition(",
        "clearing never exceeds what is left of the spend",
        ("tests/unit/test_payment.py", "tests/unit/test_payment_stateful.py"),
    ),
    Mutant(
        "refund-confirmed-for-another-amount", "domain/payment.py",
        "        if cmd.amount != refund.amount:",
        "        if False:",
        "a refund is confirmed only by a transfer of the requested amount",
        ("tests/unit/test_payment.py", "tests/unit/test_payment_stateful.py"),
    ),
    Mutant(
        "refund-confirmed-twice", "domain/payment.py",
        "        if refund.confirmed:\n            raise InvalidTransition(",
        "        if False:\n            raise InvalidTransition(",
        "a refund resolves once",
        ("tests/unit/test_payment.py", "tests/unit/test_payment_stateful.py"),
    ),
    Mutant(
        "retract-spend-with-refunds", "domain/payment.py",
        "        if committed is not None and not committed.is_zero:",
        "        if False:",
        "a spend with refunds committed is not silently retracted (it needs compensation)",
        ("tests/unit/test_payment.py", "tests/unit/test_payment_stateful.py"),
    ),
    Mutant(
        "retract-spend-by-another-log", "domain/payment.py",
        "        if cmd.evidence != self.spend_evidence:",
        "        if False:",
        "only the log the spend rests on can retract it",
        ("tests/unit/test_payment.py", "tests/unit/test_payment_stateful.py"),
    ),
    Mutant(
        "posted-hold-voided", "domain/payment.py",
        "                if self.hold is Hold.PENDING:\n                    self.hold = Hold.VOIDED",
        "                if True:\n                    self.hold = Hold.VOIDED",
        "the hold resolves at most once: a posted hold is never voided",
        ("tests/unit/test_payment.py", "tests/unit/test_payment_stateful.py"),
    ),
    Mutant(
        "money-accepts-bool-units", "domain/money.py",
        "        if type(self.units) is not int:",
        "        if not isinstance(self.units, int):",
        "an amount is an int of minor units (not a bool)",
        ("tests/unit/test_money.py",),
    ),
    Mutant(
        "money-parse-rounds", "domain/money.py",
        "        if scaled != scaled.to_integral_value():",
        "        if False:",
        "parsing never drops digits beyond the currency's decimals",
        ("tests/unit/test_money.py",),
    ),
    Mutant(
        "money-convert-truncates-silently", "domain/money.py",
        "        if remainder and exact:",
        "        if False:",
        "converting to fewer decimals is exact or says it is not",
        ("tests/unit/test_money.py",),
    ),
    Mutant(
        "stale-cursor-accepted", "cardpay/handlers/chain.py",
        "        if current != previous:",
        "        if False:",
        "a second listener with the same name cannot move the cursor under the first",
        (HANDLER_UNIT, "tests/integration/test_concurrency.py"),
    ),
    Mutant(
        "single-command-claim-ignored", "cardpay/handlers/chain.py",
        "        if not uow.claims.claim(command.command_id, "
        "block_hash=command.evidence.block_hash):",
        "        if not (uow.claims.claim(command.command_id, "
        "block_hash=command.evidence.block_hash) or True):",
        "a chain command on the one-by-one path is applied once, however often it is delivered",
        (HANDLER_UNIT, "tests/integration/test_concurrency.py", "tests/integration/test_listener_pipeline.py",
         "tests/integration/test_reorg.py::test_refund_reorged_out_is_in_flight_again_then_"
         "confirmed_when_remined"),
    ),
    Mutant(
        "bulk-claims-kept-on-conflict", "cardpay/handlers/chain.py",
        "            uow.claims.release([cmd.command_id for cmd in decided])",
        "            pass  # mutant: claims kept",
        "spends whose bulk append conflicted are decided again, not left claimed and unapplied",
        (HANDLER_UNIT, "tests/integration/test_concurrency.py"),
    ),
    Mutant(
        "unmatched-refund-transfer-kept-claimed", "cardpay/handlers/chain.py",
        "            uow.claims.release([command.command_id])",
        "            pass  # mutant: claim kept",
        "a refund transfer seen before its submission confirms the refund once it is recorded",
        (HANDLER_UNIT, "tests/integration/test_concurrency.py"),
    ),
    Mutant(
        "retraction-of-what-no-longer-rests", "cardpay/handlers/chain.py",
        "        return payment.spend_evidence == effect.evidence",
        "        return True",
        "a reorg retracts only what still rests on the orphaned log (a moved spend is not "
        "retracted twice)",
        (HANDLER_UNIT, FORK_SWITCH, *REORG_TESTS),
    ),
)


@dataclass
class Outcome:
    name: str
    path: str
    result: str
    seconds: float
    caught_by: list[str]
    invariant: str
    tests: list[str]
    left_out: list[str]
    """Named tests not run: their file does not import, or they fail unmutated."""


# -- the copy -------------------------------------------------------------------------------------
def _git(*args: str, stdout: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(REPO), *args], stdout=stdout, check=True)


def make_copy(target: Path, *, rev: str | None) -> str:
    """The tree at `rev` (or the working tree) in `target`; returns what was copied."""
    target.mkdir(parents=True)
    if rev is not None:
        commit = _git("rev-parse", "--verify", f"{rev}^{{commit}}").stdout.decode().strip()
        archive = _git("archive", "--format=tar", commit).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
        described = f"commit {commit}"
    else:
        names = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard").stdout
        for name in filter(None, names.decode().split("\0")):
            source = REPO / name
            if source.is_file():
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target / name)
        head = _git("rev-parse", "HEAD").stdout.decode().strip()
        described = f"working tree on {head}"
    node_modules = REPO / "node_modules"
    if node_modules.is_dir():  # Anvil and solcjs; read only
        (target / "node_modules").symlink_to(node_modules)
    return described


def check_snippets(root: Path, mutants: Iterable[Mutant]) -> list[str]:
    """Every problem that would make a mutant test nothing: missing files, stale snippets."""
    problems = []
    for m in mutants:
        path = root / m.path
        if not path.is_file():
            problems.append(f"{m.name}: {m.path} does not exist")
            continue
        count = path.read_text().count(m.original)
        if count != 1:
            problems.append(f"{m.name}: the original snippet occurs {count} times in {m.path} "
                            f"(expected once):\n    {m.original!r}")
        for test in m.tests:
            if not (root / test.split("::")[0]).is_file():
                problems.append(f"{m.name}: test file {test.split('::')[0]} does not exist")
    return problems


def apply(root: Path, mutant: Mutant) -> None:
    path = root / mutant.path
    text = path.read_text()
    if text.count(mutant.original) != 1:
        raise SystemExit(f"{mutant.name}: snippet not found exactly once in {mutant.path}")
    path.write_text(text.replace(mutant.original, mutant.mutated))


# -- running pytest -------------------------------------------------------------------------------
def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root)  # also for the subprocesses tests start (CLI tests)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("PYTEST_ADDOPTS", None)
    return env


PROBE = '''
import pathlib, sys
import cardpay.kafka.relay, domain.money, listener.poller, tests.conftest
root = pathlib.Path(sys.argv[1]).resolve()
for module in (cardpay.kafka.relay, domain.money, listener.poller, tests.conftest):
    where = pathlib.Path(module.__file__).resolve()
    assert where.is_relative_to(root), f"{module.__name__} imported from {where}, not {root}"
'''

PROBE_TEST = '''
import pathlib
import listener.poller


def test_modules_come_from_the_copy():
    here = pathlib.Path(__file__).resolve().parents[1]
    where = pathlib.Path(listener.poller.__file__).resolve()
    assert where.is_relative_to(here), f"listener.poller imported from {where}"
'''


def probe(root: Path) -> None:
    """The copy's modules are the ones imported, in Python and under pytest."""
    subprocess.run([str(PYTHON), "-c", PROBE, str(root)], cwd=root, env=_env(root), check=True)
    probe_dir = root / "survey_probe"
    probe_dir.mkdir()
    (probe_dir / "test_probe.py").write_text(PROBE_TEST)
    try:
        rc, output, _ = run_pytest(root, ["survey_probe/test_probe.py"], timeout=120)
        if rc != 0:
            raise SystemExit(f"probe failed: pytest does not import the copy\n{output}")
    finally:
        shutil.rmtree(probe_dir)


def run_pytest(root: Path, tests: Sequence[str], *, timeout: float,
               stop_first: bool = True) -> tuple[int | None, str, float]:
    """(exit status or None on timeout, output, seconds)."""
    command = [str(PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
    if stop_first:
        command.insert(4, "-x")
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=root, env=_env(root), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
        rc: int | None = process.returncode
    except subprocess.TimeoutExpired:
        output, rc = _end(process), None
    except BaseException:  # the survey itself is stopped: take this run down with it
        _end(process)
        raise
    return rc, output.decode(errors="replace"), time.monotonic() - started


def _end(process: subprocess.Popen[bytes]) -> bytes:
    """End the run's session: pytest and what it started (Postgres, Anvil, Kafka)."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
    return output


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds: the current run is ended, the copies removed


FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.MULTILINE)


def classify(rc: int | None, output: str) -> tuple[str, list[str]]:
    if rc is None:
        return "timed out", []
    if rc == 0:
        return "survived", []
    if rc == 1:
        return "killed", sorted(set(FAILED.findall(output)))
    return "error", sorted(set(FAILED.findall(output)))


# -- the survey -----------------------------------------------------------------------------------
COLLECT_ERROR = re.compile(r"^ERROR (\S+\.py)(?:\s|$)", re.MULTILINE)


@dataclass
class Broken:
    """Named tests that cannot tell anything on this tree: files that do not even import, and
    tests that fail unmutated. They are left out of every mutant's run (and reported)."""

    files: set[str]
    tests: set[str]

    def selection(self, tests: Sequence[str]) -> tuple[list[str], list[str]]:
        """(pytest arguments for what is left, the named tests left out)."""
        kept, dropped = [], []
        for test in tests:
            if test.split("::")[0] in self.files or test in self.tests:
                dropped.append(test)
            else:
                kept.append(test)
        deselect = sorted(b for b in self.tests
                          if any(b.startswith(f"{k}::") or b.startswith(f"{k}[") for k in kept))
        args = [*kept, *(f"--deselect={b}" for b in deselect)] if kept else []
        return args, [*dropped, *deselect]


def collect(root: Path, tests: Sequence[str]) -> set[str]:
    """The named test files that do not import (left out); stops the survey on anything else."""
    broken: set[str] = set()
    for _ in range(2):
        selected = [t for t in tests if t.split("::")[0] not in broken]
        rc, output, _ = run_pytest(root, ["--collect-only", *selected], timeout=300,
                                   stop_first=False)
        if rc == 0:
            return broken
        new = set(COLLECT_ERROR.findall(output)) - broken
        if not new:
            break
        broken |= new
    raise SystemExit(f"the named tests do not collect (exit {rc}):\n{output[-4000:]}")


def run_baseline(root: Path, tests: Sequence[str], timeout: float) -> set[str]:
    """The named tests that fail on the unmutated copy."""
    print(f"baseline: {len(tests)} test selections on the unmutated copy ...", flush=True)
    rc, output, seconds = run_pytest(root, tests, timeout=timeout, stop_first=False)
    if rc == 0:
        print(f"baseline passed in {seconds:.0f}s", flush=True)
        return set()
    failing = set(FAILED.findall(output))
    if rc != 1 or not failing:
        raise SystemExit(f"baseline could not run (exit {rc}) after {seconds:.0f}s:\n"
                         f"{output[-4000:]}")
    print(f"baseline: {len(failing)} named tests FAIL unmutated and are left out:\n  "
          + "\n  ".join(sorted(failing)), flush=True)
    return failing


def run_mutant(work: Path, pristine: Path, mutant: Mutant, broken: Broken, *, timeout: float,
               every_failure: bool, log_dir: Path | None) -> Outcome:
    args, left_out = broken.selection(mutant.tests)
    if not args:
        return Outcome(mutant.name, mutant.path, "not run", 0.0, [], mutant.invariant,
                       list(mutant.tests), left_out)
    copy = work / mutant.name
    shutil.copytree(pristine, copy, symlinks=True)
    try:
        apply(copy, mutant)
        rc, output, seconds = run_pytest(copy, args, timeout=timeout,
                                         stop_first=not every_failure)
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    result, caught_by = classify(rc, output)
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / f"{mutant.name}.log").write_text(output)
    return Outcome(mutant.name, mutant.path, result, round(seconds, 1), caught_by,
                   mutant.invariant, list(mutant.tests), left_out)


def survey(mutants: Sequence[Mutant], *, rev: str | None, timeout: float, baseline: bool,
           log_dir: Path | None, every_failure: bool = False) -> tuple[str, list[Outcome]]:
    work = Path(tempfile.mkdtemp(prefix="cardpay-mutants-"))
    try:
        pristine = work / "pristine"
        described = make_copy(pristine, rev=rev)
        print(f"copied {described} to {pristine}", flush=True)
        problems = check_snippets(pristine, mutants)
        if problems:
            raise SystemExit("stale mutants (fix their snippets):\n  " + "\n  ".join(problems))
        probe(pristine)
        tests = list(dict.fromkeys(t for m in mutants for t in m.tests))
        broken = Broken(collect(pristine, tests), set())
        if broken.files:
            print("named test files that do not import, left out: "
                  + ", ".join(sorted(broken.files)), flush=True)
        if baseline:
            kept = [t for t in tests if t.split("::")[0] not in broken.files]
            broken.tests = run_baseline(pristine, kept, timeout * len(mutants))
        outcomes = []
        for mutant in mutants:
            outcome = run_mutant(work, pristine, mutant, broken, timeout=timeout,
                                 every_failure=every_failure, log_dir=log_dir)
            outcomes.append(outcome)
            print(f"{mutant.name:42} {outcome.result:10} {outcome.seconds:6.0f}s  "
                  f"{', '.join(outcome.caught_by)}", flush=True)
        return described, outcomes
    finally:
        shutil.rmtree(work, ignore_errors=True)


def table(outcomes: Sequence[Outcome]) -> str:
    lines = [f"{'mutant':42} {'result':10} {'seconds':>7}  caught by"]
    for o in outcomes:
        lines.append(f"{o.name:42} {o.result:10} {o.seconds:7.0f}  {', '.join(o.caught_by)}")
    killed = sum(o.result == "killed" for o in outcomes)
    counts = {r: sum(o.result == r for o in outcomes)
              for r in ("killed", "survived", "timed out", "error", "not run")}
    lines.append("")
    ran = sum(o.result != "not run" for o in outcomes)
    lines.append(f"score: {killed}/{ran} killed "
                 f"({', '.join(f'{n} {r}' for r, n in counts.items())})")
    for o in outcomes:
        if o.left_out:
            lines.append(f"{o.name}: left out (broken unmutated): {', '.join(o.left_out)}")
    return "\n".join(lines)


def machine() -> str:
    cpu = "unknown CPU"
    with_model = Path("/proc/cpuinfo")
    if with_model.exists():
        for line in with_model.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}, " \
           f"Python {platform.python_version()}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--only", action="append", metavar="NAME", help="run this mutant only "
                        "(repeatable)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--rev", default="HEAD", help="the commit to copy (default HEAD)")
    source.add_argument("--worktree", action="store_true",
                        help="copy the working tree (tracked and untracked, not ignored files)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds per mutant (default {DEFAULT_TIMEOUT:.0f})")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip running the tests on the unmutated copy first")
    parser.add_argument("--every-failure", action="store_true",
                        help="run all the named tests of a mutant, not stop at the first failure "
                        "(slower; shows every test that catches it)")
    parser.add_argument("--logs", type=Path, help="write each mutant's pytest output here")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)

    by_name = {m.name: m for m in MUTANTS}
    if args.list:
        for m in MUTANTS:
            print(f"{m.name}  [{m.path}]\n    breaks: {m.invariant}\n"
                  f"    caught by: {', '.join(m.tests)}")
        return 0
    unknown = [name for name in args.only or [] if name not in by_name]
    if unknown:
        parser.error(f"unknown mutant(s): {', '.join(unknown)} (see --list)")
    selected = [by_name[n] for n in args.only] if args.only else list(MUTANTS)

    started = datetime.now(UTC)
    described, outcomes = survey(selected, rev=None if args.worktree else args.rev,
                                 timeout=args.timeout, baseline=not args.no_baseline,
                                 log_dir=args.logs,
                                 every_failure=args.every_failure)
    print()
    print(table(outcomes))
    if args.json is not None:
        args.json.write_text(json.dumps({
            "source": described, "started": started.isoformat(timespec="seconds"),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(), "timeout": args.timeout,
            "outcomes": [asdict(o) for o in outcomes],
        }, indent=2) + "\n")
    return 0 if all(o.result == "killed" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
