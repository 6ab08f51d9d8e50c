"""The Ponder side of the backfill benchmark: Ponder 0.16 indexing the same card events.

``run_ponder`` starts ``ponder start`` (the project in ``benchmarks/ponder``: embedded PGlite in a
fresh directory, telemetry off, HTTP server on 127.0.0.1 only) against the node holding a
:class:`~benchmarks.workload.Workload`, and measures the wall time from process start until every
row is visible through its HTTP API: as many ``payment`` rows as Spend events, as many
``transfer`` rows, and per-token totals equal to the workload's. Ponder's ``/ready`` turns 200 when
the historical backfill reaches the chain's finalized block, which for an unknown chain such as
Anvil (31337) is 30 blocks behind the head; the last 30 blocks are indexed afterwards by its
realtime sync, so ``/ready`` alone would stop the clock early. Both times are reported.

    python -m benchmarks.ponder_bench --events 100000

starts an Anvil node, generates the workload, runs Ponder and prints events, seconds, events/s
and the machine. The first run installs the pinned npm packages (``npm ci``) into
``benchmarks/ponder/node_modules``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import requests

from benchmarks.machine import facts
from benchmarks.workload import Workload, WorkloadError, generate

__all__ = [
    "PONDER_DIR",
    "PONDER_VERSION",
    "PonderBenchError",
    "PonderResult",
    "ensure_installed",
    "machine_info",
    "run_ponder",
]

PONDER_DIR = Path(__file__).resolve().parent / "ponder"
PONDER_VERSION = "0.16.10"
HOST = "127.0.0.1"
DEFAULT_TIMEOUT = 1800.0
_STOP_TIMEOUT = 15.0
_COUNT_EVERY = 2.0
"""Seconds between row counts while Ponder's checkpoint is before the workload's last block."""
_TOTALS_GRACE = 30.0
"""Seconds the per-token totals may lag behind complete row counts before it is an error."""
_LOG_TAIL_LINES = 40

# Variables that would make Ponder use another database, schema or port than the ones given here.
_SCRUBBED_ENV = ("DATABASE_URL", "DATABASE_PRIVATE_URL", "DATABASE_SCHEMA",
                 "DATABASE_VIEWS_SCHEMA", "PORT", "PONDER_LOG_LEVEL")  # fmt: skip


class PonderBenchError(RuntimeError):
    """Ponder could not be installed, started, or did not index the workload correctly."""


@dataclass(frozen=True)
class PonderResult:
    """One Ponder run. ``seconds`` is process start → every row visible (the number compared);
    ``ready_seconds`` is process start → ``/ready`` 200, ``http_seconds`` process start → the
    HTTP server answering (build, migrations and setup done), ``rows_at_ready`` the payment
    rows visible at the first 200 of ``/ready``."""

    seconds: float
    rows: int
    events_per_second: float
    transfers: int
    ready_seconds: float | None
    http_seconds: float | None
    rows_at_ready: int | None
    log_path: Path

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["log_path"] = str(self.log_path)
        return data


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        raise PonderBenchError("node not found on PATH: install Node.js 20")
    return node


def _ponder_entry(project_dir: Path) -> Path:
    return project_dir / "node_modules" / "ponder" / "dist" / "esm" / "bin" / "ponder.js"


def ensure_installed(project_dir: Path = PONDER_DIR, *, timeout: float = 900.0) -> None:
    """``npm ci`` in the Ponder project unless its node_modules match package-lock.json
    (npm's own ``node_modules/.package-lock.json`` is at least as new as the lock file and
    Ponder is at the pinned version). Install scripts are not run (none is needed)."""
    lock = project_dir / "package-lock.json"
    installed_lock = project_dir / "node_modules" / ".package-lock.json"
    installed_pkg = project_dir / "node_modules" / "ponder" / "package.json"
    if (
        installed_lock.is_file()
        and installed_pkg.is_file()
        and installed_lock.stat().st_mtime >= lock.stat().st_mtime
        and json.loads(installed_pkg.read_text(encoding="utf-8")).get("version") == PONDER_VERSION
    ):
        return
    npm = shutil.which("npm")
    if npm is None:
        raise PonderBenchError("npm not found on PATH: install Node.js 20 (with npm)")
    proc = subprocess.run(
        [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
        cwd=project_dir,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise PonderBenchError(
            f"npm ci in {project_dir} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    if not _ponder_entry(project_dir).is_file():
        raise PonderBenchError(f"npm ci did not install ponder in {project_dir}")


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _ponder_env(rpc_url: str, workload: Workload, pglite_dir: Path, *,
                database_url: str | None = None, rpc_copies: int = 1) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    env.pop("CARDPAY_PONDER_DATABASE_URL", None)
    if database_url is not None:
        env["CARDPAY_PONDER_DATABASE_URL"] = database_url
    d = workload.deployment
    env.update({
        "PONDER_TELEMETRY_DISABLED": "true",
        "NO_COLOR": "1",
        "PONDER_RPC_URL_31337": rpc_url,
        "CARDPAY_SPENDER_MODULE": d.spender_module,
        "CARDPAY_TOKENS": ",".join(t.address for t in d.tokens.values()),
        "CARDPAY_SETTLEMENT_ACCOUNT": d.settlement_account,
        "CARDPAY_START_BLOCK": str(workload.start_block),
        "CARDPAY_PGLITE_DIR": str(pglite_dir),
        "CARDPAY_RPC_COPIES": str(rpc_copies),
    })  # fmt: skip
    return env


class _PonderProcess:
    """``ponder start`` in its own process group (node, plus the esbuild service vite starts),
    output to a log file; stop() sends SIGTERM (Ponder's graceful shutdown, 5 s grace) and
    kills whatever of the group is left."""

    def __init__(self, cmd: Sequence[str], env: Mapping[str, str], cwd: Path, log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        try:
            self.process = subprocess.Popen(
                list(cmd), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            self._log.close()
            raise PonderBenchError(f"could not run {cmd[0]}: {exc}") from exc

    def exited(self) -> int | None:
        return self.process.poll()

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        pgid = self.process.pid
        try:
            if self.process.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGTERM)
                try:
                    self.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pgid, signal.SIGKILL)
                    self.process.wait(timeout=timeout)
            # Children left in the group (the esbuild service): give them a moment, then kill.
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                try:
                    os.killpg(pgid, 0)
                except (ProcessLookupError, PermissionError):
                    break
                time.sleep(0.05)
            else:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
        finally:
            self._log.close()

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no ponder log)"
        tail = text.splitlines()[-lines:]
        return f"--- ponder output ({self.log_path}), last {len(tail)} lines ---\n" + "\n".join(
            tail
        )


_HTTP_SERVER_RE = re.compile(r'"msg":"Created HTTP server".*?"port":(\d+)')


def _server_port(log_path: Path) -> int | None:
    """The port in Ponder's "Created HTTP server" log line (it moves to the next free port
    when the requested one is taken)."""
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    match = _HTTP_SERVER_RE.search(text)
    return int(match.group(1)) if match else None


def _status_block(response: requests.Response) -> int:
    """The block of Ponder's indexing checkpoint on the chain, from ``/status``
    (``{"anvil": {"id": 31337, "block": {"number": N, ...}}}``); -1 if there is none yet."""
    if response.status_code != 200:
        return -1
    try:
        body = response.json()
        return max((int(c["block"]["number"]) for c in body.values()), default=-1)
    except (ValueError, TypeError, KeyError, AttributeError):
        return -1


def _expected_totals(workload: Workload) -> dict[str, dict[str, Any]]:
    return {
        workload.token_address(symbol).lower(): {"count": t.count, "amount": str(t.amount)}
        for symbol, t in workload.per_token.items()
        if t.count
    }


def run_ponder(
    rpc_url: str,
    workload: Workload,
    work_dir: Path,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    poll_interval: float = 0.1,
    project_dir: Path = PONDER_DIR,
    log: bool = False,
    database_url: str | None = None,
    rpc_copies: int = 1,
) -> PonderResult:
    """Run Ponder over ``workload`` on the node at ``rpc_url`` with a fresh PGlite database in
    ``work_dir`` (created; its previous ``pglite`` directory is removed), or in the PostgreSQL
    database at ``database_url`` (which should be empty), until every row is visible; stop it
    and every child process. The log stays at ``work_dir/ponder.log``. ``rpc_copies`` lists the
    URL that many times in Ponder's config: one client-side rate limiter per copy.

    Raises PonderBenchError if Ponder exits, times out, or shows more rows than expected or
    totals that differ from the workload's."""
    ensure_installed(project_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    pglite_dir = work_dir / "pglite"
    if pglite_dir.exists():
        shutil.rmtree(pglite_dir)
    log_path = work_dir / "ponder.log"
    port = _free_port()
    cmd = [
        _node(), str(_ponder_entry(project_dir)), "start",
        "--root", str(project_dir), "--schema", "public",
        "--hostname", HOST, "--port", str(port),
        "--log-format", "json", "--log-level", "info",
    ]  # fmt: skip
    env = _ponder_env(rpc_url, workload, pglite_dir, database_url=database_url,
                      rpc_copies=rpc_copies)
    expected_rows = workload.events
    expected_totals = _expected_totals(workload)

    session = requests.Session()
    started = time.perf_counter()
    proc = _PonderProcess(cmd, env, project_dir, log_path)
    http_seconds: float | None = None
    ready_seconds: float | None = None
    rows_at_ready: int | None = None
    base: str | None = None
    last_counts: dict[str, Any] = {}
    last_count = 0.0
    rows_complete_at: float | None = None
    try:
        while True:
            now = time.perf_counter()
            if now - started > timeout:
                raise PonderBenchError(
                    f"ponder did not show {expected_rows} rows within {timeout:.0f}s "
                    f"(last counts: {last_counts})\n{proc.log_tail()}"
                )
            code = proc.exited()
            if code is not None:
                raise PonderBenchError(f"ponder exited with code {code}\n{proc.log_tail()}")
            if base is None:
                found = _server_port(log_path)
                if found is None:
                    time.sleep(poll_interval)
                    continue
                base = f"http://{HOST}:{found}"
            is_ready = False
            try:
                if ready_seconds is None:
                    ready = session.get(f"{base}/ready", timeout=10)
                    if http_seconds is None:
                        http_seconds = time.perf_counter() - started
                    is_ready = ready.status_code == 200
                # Counting 100k rows takes Ponder's event loop (PGlite runs in its process), so
                # count when its checkpoint (/status, one row) has reached the last block of the
                # workload, or now and then.
                indexed = _status_block(session.get(f"{base}/status", timeout=10))
                if (
                    indexed < workload.last_block
                    and not (is_ready and ready_seconds is None)
                    and time.perf_counter() - last_count < _COUNT_EVERY
                ):
                    time.sleep(poll_interval)
                    continue
                last_count = time.perf_counter()
                counts_response = session.get(f"{base}/bench/counts", timeout=10)
            except requests.RequestException:
                time.sleep(poll_interval)
                continue
            if counts_response.status_code != 200:
                time.sleep(poll_interval)
                continue
            seen = time.perf_counter()
            last_counts = counts_response.json()
            payments, transfers = int(last_counts["payments"]), int(last_counts["transfers"])
            if ready_seconds is None and is_ready:
                ready_seconds, rows_at_ready = seen - started, payments
                _say(log, f"/ready at {ready_seconds:.1f}s with {payments} payment rows")
            if payments > expected_rows or transfers > expected_rows:
                raise PonderBenchError(
                    f"ponder shows {payments} payments and {transfers} transfers, "
                    f"more than the {expected_rows} events of the workload"
                )
            if payments == expected_rows and transfers == expected_rows:
                # Seen on PGlite: a read can land between a block's row inserts and its totals
                # update (the API and the indexer share its one session), so the totals may
                # still lag here; the clock stops when they match too.
                totals = last_counts["totals"]
                if totals == expected_totals:
                    seconds = seen - started
                    break
                if rows_complete_at is None:
                    rows_complete_at = seen
                elif seen - rows_complete_at > _TOTALS_GRACE:
                    raise PonderBenchError(
                        f"ponder's totals {totals} differ from the workload's {expected_totals} "
                        f"{_TOTALS_GRACE:.0f}s after every row was visible"
                    )
            time.sleep(poll_interval)
    finally:
        session.close()
        proc.stop()
    _say(log, f"{expected_rows} rows visible at {seconds:.1f}s")
    return PonderResult(
        seconds=seconds,
        rows=expected_rows,
        events_per_second=expected_rows / seconds,
        transfers=expected_rows,
        ready_seconds=ready_seconds,
        http_seconds=http_seconds,
        rows_at_ready=rows_at_ready,
        log_path=log_path,
    )


def machine_info() -> dict[str, Any]:
    """The machine (benchmarks.machine), plus the Node.js and Ponder versions."""
    node_version: str | None = None
    with contextlib.suppress(PonderBenchError, OSError, subprocess.SubprocessError):
        node_version = subprocess.run(
            [_node(), "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    return {**facts(), "node": node_version, "ponder": PONDER_VERSION}


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(f"[ponder] {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    from cardpay.devstack.anvil import AnvilHarnessError, AnvilNode
    from cardpay.devstack.local_chain import LocalChainError

    parser = argparse.ArgumentParser(
        description="Backfill benchmark, Ponder side: Ponder 0.16 over N card events on Anvil."
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--events-per-tx", type=int, default=None,
                        help="spends per SpendBatcher transaction (= per block)")  # fmt: skip
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the PGlite database and ponder.log go (default: a temp dir)")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    machine = machine_info()
    with contextlib.ExitStack() as stack:
        if args.work_dir is None:
            work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ponder-")))
        else:
            work_dir = args.work_dir
        try:
            ensure_installed()
            node = stack.enter_context(AnvilNode())
            extra = {} if args.events_per_tx is None else {"events_per_tx": args.events_per_tx}
            workload = generate(node.rpc_url, args.events, args.seed, log=not args.json, **extra)
            result = run_ponder(node.rpc_url, workload, work_dir, timeout=args.timeout,
                                log=not args.json)  # fmt: skip
        except (PonderBenchError, WorkloadError, LocalChainError, AnvilHarnessError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps({"workload": workload.to_dict(), "ponder": result.to_dict(),
                              "machine": machine}, indent=2))  # fmt: skip
            return 0
        print(f"machine:   {machine['cpu']}, {machine['cores']} cores, {machine['ram_gib']} GiB RAM, "
              f"{machine['os']}, node {machine['node']}")  # fmt: skip
        print(f"workload:  {workload.events} card events (Spend + Transfer) in "
              f"{workload.transactions} txs over {workload.blocks} blocks "
              f"({workload.first_block}..{workload.last_block}, head {workload.head_block}); "
              f"generated in {workload.seconds:.1f}s")  # fmt: skip
        print(f"ponder:    {PONDER_VERSION}, PGlite; HTTP up at {_fmt(result.http_seconds)}, "
              f"/ready at {_fmt(result.ready_seconds)} with {result.rows_at_ready} rows")  # fmt: skip
        print(f"events:    {result.rows}")
        print(f"seconds:   {result.seconds:.2f}")
        print(f"events/s:  {result.events_per_second:,.0f}")
    return 0


def _fmt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}s"


if __name__ == "__main__":
    sys.exit(main())
