"""`cardpay api` as a real process on a free port, for e2e tests; `served` serves an app built
in the test's own process the same way (uvicorn, uvloop, httptools)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from tests.support.network import SECRET


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def env_for(pg_url: str, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CARDPAY_")}
    return {**base, "CARDPAY_DATABASE_URL": pg_url, "CARDPAY_WEBHOOK_SECRETS": SECRET, **extra}


def wait_healthy(proc: subprocess.Popen[str], base: str, timeout: float = 60) -> None:
    """Until `cardpay api` at `base` answers /healthz; fails with its stderr if it exits."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "cardpay api did not come up"
        time.sleep(0.05)


@contextmanager
def running_api(pg_url: str, **extra: str) -> Iterator[str]:
    """Start `cardpay api`, wait for /healthz, yield its base URL; stop it with Ctrl-C after."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cardpay.cli.main", "api", "--port", str(port)],
                            env=env_for(pg_url, **extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, base)
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()


@contextmanager
def served(app: Any, *, lifespan: str = "off") -> Iterator[str]:
    """`app` served over real HTTP on a free port, by uvicorn on a thread of this process, with
    the event loop and HTTP parser `cardpay api` uses (uvloop, httptools: they decide what a
    malformed request gets before the app sees it); yields the base URL."""
    import threading

    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                            access_log=False, lifespan=lifespan, loop="uvloop", http="httptools")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="served-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def ctrl_c_default() -> None:
    """A `preexec_fn` for a child a test stops with SIGINT: SIGINT at its default and not
    blocked, as a terminal's Ctrl-C finds a command, whatever this test process's own state.
    (In the full suite two such tests once saw their child ignore SIGINT; the disposition or
    mask was inherited from something earlier in the session, not yet found.)"""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def kill_tree(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL a process and every process it started (a test that failed midway leaves
    nothing running)."""
    import contextlib

    import psutil

    tree = psutil.Process(proc.pid).children(recursive=True)
    proc.kill()
    proc.wait(10)
    for child in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
