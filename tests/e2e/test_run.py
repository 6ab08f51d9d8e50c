"""`cardpay run` as a user starts it: it comes up (Anvil, embedded PostgreSQL, the replicas,
every process), serves the API and the finance page, restarts a process killed with SIGKILL,
and on SIGTERM stops with exit status 0 and no process of its tree left (the embedded
PostgreSQL server, which its launcher detaches, included); killed itself with SIGKILL, it
leaves nothing running either. Bad input is one line."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.api_process import free_port, kill_tree

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
READY = re.compile(r"^cardpay run: ready: API (\S+) .* metrics (.+); Ctrl-C", re.M)


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CARDPAY_")}
    return {**base, "CARDPAY_DATA_DIR": str(tmp_path / "data"), **extra}


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(what: str, check: Callable[[], object], timeout: float,
               proc: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> object:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"cardpay run exited ({proc.returncode}) before {what}:\n"
                        f"{log.read_text()[-4000:] if log else ''}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout:.0f}s:\n"
                        f"{log.read_text()[-4000:] if log else ''}")
        time.sleep(0.1)


@pytest.fixture
def started(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cardpay", "run", "--port", str(free_port()),
             "--metrics-port", "0", "--grace", "5", "--cardholders", "2"],
            cwd=ROOT, env=env(tmp_path), stdout=o, stderr=e)
    try:
        yield proc, out, err
    finally:
        if proc.poll() is None:  # the test failed midway: leave nothing running
            kill_tree(proc)


def test_run_comes_up_serves_restarts_a_killed_process_and_stops_leaving_nothing(
        started: tuple[subprocess.Popen[bytes], Path, Path], tmp_path: Path) -> None:
    proc, out, err = started
    t0 = time.monotonic()
    ready = wait_until("readiness line", lambda: READY.search(out.read_text()), 50, proc, err)
    assert isinstance(ready, re.Match)
    api, metrics = ready.group(1), ready.group(2).split()
    print(f"ready after {time.monotonic() - t0:.1f}s")
    assert len(out.read_text().splitlines()) == 1  # one readiness line, nothing else on stdout

    assert httpx.get(f"{api}/healthz", timeout=5).json() == {"status": "ok"}
    assert httpx.get(f"{api}/readyz", timeout=5).status_code == 200
    page = httpx.get(f"{api}/finance/login", timeout=5)
    assert page.status_code == 200 and "<form" in page.text
    assert len(metrics) == 4  # the API's, the listener's, the projector's, the saga worker's
    for url in metrics:
        assert httpx.get(url, timeout=5).status_code == 200, url
    assert "cardpay_listener_processed_block" in httpx.get(metrics[1], timeout=5).text
    assert "cardpay_saga_steps_total" in httpx.get(metrics[3], timeout=5).text
    log = err.read_text()
    assert "dev default: spends are signed with Anvil's dev account 1" in log
    assert "webhook secret is in" in log and (tmp_path / "data" / "dev-webhook-secret").is_file()

    # SIGKILL the API: it is restarted (a new pid, a line saying so) and serves again
    old = int(re.findall(r"started api \(pid (\d+)\)", log)[-1])
    os.kill(old, signal.SIGKILL)
    restarted = wait_until("restart of the API", lambda: re.search(
        r"started api \(pid (\d+)\) \(restart 1\)", err.read_text()), 20, proc, err)
    assert isinstance(restarted, re.Match)
    new = int(restarted.group(1))
    assert new != old and not gone(new)
    assert f"api (pid {old}) was killed by SIGKILL" in err.read_text()
    wait_until("the restarted API", lambda: _answers(f"{api}/healthz"), 30, proc, err)

    # SIGTERM: exit status 0, and every process of the tree is gone
    tree = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    postmaster = int((tmp_path / "data" / "pgdata" / "postmaster.pid").read_text().split()[0])
    everything = [*tree, postmaster]
    names = {p: psutil.Process(p).name() for p in everything if not gone(p)}
    assert "anvil" in names.values() and new in tree and len(tree) >= 6, names
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=40) == 0, err.read_text()[-3000:]
    wait_until("every process of the tree gone",
               lambda: all(gone(p) for p in everything), 10)
    assert err.read_text().rstrip().endswith("cardpay run: stopped")
    print(f"whole test {time.monotonic() - t0:.1f}s")


def test_a_parent_killed_with_sigkill_leaves_nothing_running(
        started: tuple[subprocess.Popen[bytes], Path, Path], tmp_path: Path) -> None:
    """The kernel tells the children and Anvil (PR_SET_PDEATHSIG) and the embedded server's
    watcher stops the server: nothing is left even without the parent's own stop."""
    proc, out, err = started
    wait_until("readiness line", lambda: READY.search(out.read_text()), 50, proc, err)
    tree = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    postmaster = int((tmp_path / "data" / "pgdata" / "postmaster.pid").read_text().split()[0])
    proc.kill()
    proc.wait(10)
    wait_until("every process of the tree gone",
               lambda: all(gone(p) for p in [*tree, postmaster]), 30)
    assert (tmp_path / "data" / "anvil-state.json").is_file()  # Anvil stopped on SIGINT


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _run(tmp_path: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cardpay", "run", *args], cwd=ROOT,
                          env=env(tmp_path, **extra), capture_output=True, text=True,
                          timeout=60)


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _run(tmp_path, "--port", str(port))
    assert done.returncode == 1
    assert done.stderr == (f"cardpay run: port {port} on 127.0.0.1 (the API's: --port or "
                           "CARDPAY_API_PORT) is already in use; stop what uses it or choose "
                           "another\n")
    assert not (tmp_path / "data").exists()  # refused before anything started


def test_a_node_that_does_not_answer_is_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = _run(tmp_path, "--port", "0", "--metrics-port", "0", CARDPAY_RPC_URL=url)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cardpay run: cannot reach the node at {url}")
    assert "CARDPAY_RPC_URL" in lines[0]
    assert not (tmp_path / "data").exists()  # refused before anything started
