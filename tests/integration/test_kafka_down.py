"""`cardpay project` and `cardpay relay` with Kafka unreachable (a closed loopback port): bounded
retries with one log line each, then one line and exit status 1 with --until-idle; SIGINT/SIGTERM
stop them cleanly. Real subprocesses on a fresh database."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from sqlalchemy import Engine, func
from sqlalchemy import select as sql_select

from cardpay.postgres.schema import outbox
from tests.support.workload import payment_events, write

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: nothing listens


def _env(pg_url: str, port: int) -> dict[str, str]:
    return {**os.environ, "CARDPAY_DATABASE_URL": pg_url,
            "CARDPAY_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}"}


def _start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "cardpay.cli.main", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _check_gave_up(stderr: str, command: str, port: int) -> None:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    final = [line for line in lines if line.startswith(f"cardpay {command}:")]
    assert final == [lines[-1]], stderr  # one line from the command, and it is the last
    assert lines[-1].startswith(f"cardpay {command}: cannot reach Kafka at 127.0.0.1:{port}")
    assert lines[-1].endswith("check CARDPAY_KAFKA_BOOTSTRAP")
    retries = lines[:-1]
    assert retries, "no retry was logged"
    assert all(" WARNING " in line and "retry" in line and "cannot reach Kafka" in line
               for line in retries), retries


@pytest.mark.parametrize("command", ["project", "relay"])
def test_until_idle_gives_up_after_the_idle_timeout_with_one_line(
    command: str, pg_url: str, pg_engine: Engine
) -> None:
    write(pg_engine, payment_events(3, seed=1), outbox_topic="cardpay.payments")
    port = _closed_port()
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "cardpay.cli.main", command, "--until-idle", "--idle-timeout", "3"],
        cwd=ROOT, env=_env(pg_url, port), capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started

    assert proc.returncode == 1, proc.stderr
    _check_gave_up(proc.stderr, command, port)
    assert 3 <= elapsed < 60
    with pg_engine.connect() as conn:  # nothing was marked published
        assert conn.execute(sql_select(func.count()).select_from(outbox)
                            .where(outbox.c.published_at.is_not(None))).scalar_one() == 0


def _wait_for_retry_line(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.5)
        if ready:
            line = proc.stderr.readline()
            seen += line
            if "retry" in line:
                return seen
        assert proc.poll() is None, seen
    raise AssertionError(f"no retry logged within {timeout}s: {seen}")


@pytest.mark.parametrize(("command", "sig"), [("project", signal.SIGINT),
                                              ("relay", signal.SIGTERM)])
def test_a_signal_stops_a_retrying_process_cleanly(
    command: str, sig: signal.Signals, pg_url: str, pg_engine: Engine
) -> None:
    write(pg_engine, payment_events(2, seed=2), outbox_topic="cardpay.payments")
    proc = _start(_env(pg_url, _closed_port()), command)
    try:
        before = _wait_for_retry_line(proc)
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, before + err
    assert "Traceback" not in before + err
    assert all(" WARNING " in line and "retry" in line for line in err.strip().splitlines()
               if line), err
    assert ("applied 0 events" if command == "project" else "published 0 messages") in out
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def test_a_batch_size_below_one_is_a_usage_error(pg_url: str) -> None:
    for command in ("project", "relay"):
        proc = subprocess.run(
            [sys.executable, "-m", "cardpay.cli.main", command, "--batch-size", "0"],
            cwd=ROOT, env=_env(pg_url, _closed_port()), capture_output=True, text=True,
            timeout=60)
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == [
            f"cardpay {command}: --batch-size must be at least 1, got 0"]


def test_sigint_stops_a_healthy_projector_and_its_embedded_database(tmp_path: Path) -> None:
    """No CARDPAY_DATABASE_URL: `project` starts the embedded PostgreSQL as a child; Ctrl-C
    stops both, with no traceback and no process left behind."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("CARDPAY_DATABASE_URL", "CARDPAY_KAFKA_BOOTSTRAP")}
    env["CARDPAY_DATA_DIR"] = str(tmp_path / "data")
    proc = _start(env, "project")
    try:
        deadline = time.monotonic() + 120
        children: list[psutil.Process] = []
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            children = psutil.Process(proc.pid).children(recursive=True)
            if _runs_postgres(children):
                break
            time.sleep(0.2)
        assert _runs_postgres(children), "the embedded server never started"
        time.sleep(3)  # past migrations, into the projector loop
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    # 0 from the loop; 130 if a slow machine was still migrating when the signal came
    assert proc.returncode in (0, 130), (proc.returncode, out, err)
    assert proc.returncode == 130 or "applied 0 events" in out, (out, err)
    assert "Traceback" not in err, err
    assert children
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, [(p.pid, p.name()) for p in alive]


def _runs_postgres(processes: list[psutil.Process]) -> bool:
    for process in processes:
        try:
            if "postgres" in process.name():
                return True
        except psutil.NoSuchProcess:  # a short-lived helper (initdb's) already gone
            continue
    return False
