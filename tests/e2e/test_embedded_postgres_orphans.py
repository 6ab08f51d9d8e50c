"""kill -9 of a cardpay process on the embedded PostgreSQL: no server outlives its users.

`cardpay project` (a long-running process on the embedded server of CARDPAY_DATA_DIR) is killed
with SIGKILL; the next start succeeds, and once the last cardpay process is gone no postgres
process of that data dir is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.e2e


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CARDPAY_DATABASE_URL"}
    return {**env, "CARDPAY_DATA_DIR": str(data_dir), "CARDPAY_KAFKA_BOOTSTRAP": ""}


def _servers(pgdata: Path) -> list[psutil.Process]:
    """postgres processes serving this data dir."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and str(pgdata) in " ".join(cmdline):
            found.append(proc)
    return found


def _watchers(pgdata: Path) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"])
            if "--watch" in (p.info["cmdline"] or []) and str(pgdata) in (p.info["cmdline"] or [])]


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _start_project(data_dir: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "cardpay.cli.main", "project"],
                            env=_env(data_dir), text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pgdata = (data_dir / "pgdata").resolve()
    _wait(lambda: bool(_servers(pgdata)) and proc.poll() is None
          and str(proc.pid) in _pids_file(pgdata), 120, "the embedded server did not start")
    time.sleep(1.0)  # past the migrations: the process is in its loop
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    return proc


def _pids_file(pgdata: Path) -> str:
    try:
        return (pgdata / ".handle_pids.json").read_text()
    except OSError:
        return ""


def _upgrade(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cardpay.cli.main", "db", "upgrade"],
                          env=_env(data_dir), capture_output=True, text=True, timeout=120)


def test_kill_9_then_the_watcher_stops_the_server_and_the_next_start_works(
    tmp_path: Path,
) -> None:
    pgdata = (tmp_path / "pgdata").resolve()
    proc = _start_project(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    _wait(lambda: not _servers(pgdata), 30, "the server outlived its only (killed) user")
    ok = _upgrade(tmp_path)
    assert ok.returncode == 0, ok.stderr
    _wait(lambda: not _servers(pgdata), 30, "the server outlived `db upgrade`")
    _wait(lambda: not _watchers(pgdata), 30, "the watcher outlived the server")


def test_an_orphan_without_its_watcher_is_stopped_by_the_next_start(tmp_path: Path) -> None:
    pgdata = (tmp_path / "pgdata").resolve()
    proc = _start_project(tmp_path)
    for watcher in _watchers(pgdata):  # as if the watcher had been killed too (kill -9 of all)
        watcher.kill()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    time.sleep(1.0)
    orphans = _servers(pgdata)
    assert orphans, "expected the server to be left running (no watcher, no user)"

    second = _start_project(tmp_path)  # adopts nothing dead: stops the orphan, starts fresh
    try:
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in orphans)
    finally:
        second.send_signal(signal.SIGTERM)
        status = second.wait(timeout=60)
        for orphan in orphans:  # never leave a server behind, even when the check failed
            if orphan.is_running():
                orphan.kill()
    assert status in (0, 130, -signal.SIGTERM)
    _wait(lambda: not _servers(pgdata), 30, "the server outlived the last cardpay process")
