"""`cardpay run --fork-url` as the README's fork section has a user start it, against the local
stand-in for Gnosis Chain (`python -m cardpay.devstack.gnosis_standin`): it starts the fork
itself, backfills the stand-in's history through the fork (`--from-block 1`), registers the
cards of `--cards-from`, and the simulator's payments become spends sent as the Spender
module's first enabled module, read from the fork and impersonated (no key or address set)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cardpay.devstack.gnosis_standin import NEW_SPENDER_MODULE, SPENDER_DELEGATE
from listener.decode import SPEND_TOPIC
from tests.e2e.test_run import READY, env, wait_until
from tests.support.api_process import free_port, kill_tree

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
FORK_NODE = re.compile(r"an Anvil fork of \S+ at block (\d+) \(chain 100\), at (\S+);")


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[tuple[dict[str, Any], Path]]:
    cards = tmp_path / "standin.json"
    proc = subprocess.Popen([sys.executable, "-m", "cardpay.devstack.gnosis_standin",
                             "--out", str(cards)], cwd=ROOT, env=env(tmp_path),
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        yield json.loads(proc.stdout.readline()), cards
    finally:
        kill_tree(proc)


def _rpc(url: str, method: str, params: list[Any]) -> Any:
    return httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method,
                                 "params": params}, timeout=10).json()["result"]


def _payments(tmp_path: Path) -> list[dict[str, Any]]:
    done = subprocess.run([sys.executable, "-m", "cardpay", "payments", "--json",
                           "--limit", "500"], cwd=ROOT, env=env(tmp_path),
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        return []
    found: list[dict[str, Any]] = json.loads(done.stdout)
    return found


def test_run_forks_backfills_the_history_and_spends_as_the_impersonated_relayer(
        standin: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    info, cards = standin
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cardpay", "run", "--fork-url", info["rpc_url"],
             "--fork-block", str(info["head"]), "--from-block", "1", "--cards-from", str(cards),
             "--port", str(free_port()), "--metrics-port", "0", "--grace", "5"],
            cwd=ROOT, env=env(tmp_path), stdout=o, stderr=e)
    try:
        ready = wait_until("readiness line", lambda: READY.search(out.read_text()), 90, proc,
                           err)
        assert isinstance(ready, re.Match)
        api = ready.group(1)
        log = err.read_text()
        node = FORK_NODE.search(log)
        assert node is not None, log[-3000:]
        assert int(node.group(1)) == info["head"]
        fork_url = node.group(2)
        assert "impersonated on the fork" in log and "6 registered from" in log
        assert f"spends sent as {SPENDER_DELEGATE}, the Spender module's first enabled module" \
            in log
        assert "dev default: spends are signed" not in log

        history = info["history"]["spends"]
        wait_until("the history backfilled through the fork",
                   lambda: len(_payments(tmp_path)) >= history, 90, proc, err)

        secret = (tmp_path / "data" / "dev-webhook-secret").read_text().strip()
        sim = subprocess.run(
            [sys.executable, "-m", "cardpay", "network", "simulate", "--api", api,
             "--payments", "6", "--seed", "3", "--secret", secret, "--json"],
            cwd=ROOT, env=env(tmp_path), capture_output=True, text=True, timeout=180)
        assert sim.returncode in (0, 1), sim.stderr[-2000:]

        def new_spends() -> list[Any]:
            logs = _rpc(fork_url, "eth_getLogs", [{
                "fromBlock": hex(info["head"] + 1), "toBlock": "latest",
                "address": NEW_SPENDER_MODULE, "topics": [SPEND_TOPIC]}])
            return [entry for entry in logs if _rpc(fork_url, "eth_getTransactionByHash", [
                entry["transactionHash"]])["from"] == SPENDER_DELEGATE]

        wait_until("a spend sent as the impersonated relayer", new_spends, 90, proc, err)
        wait_until("the new spends indexed", lambda: len(
            [p for p in _payments(tmp_path) if p.get("spent") not in (None, "0")])
            > history, 90, proc, err)
        # the history's refunds are observed, not matched: the listener quarantined nothing
        # (the workload's own exceptions, from the network and the sagas, are expected)
        listed = subprocess.run([sys.executable, "-m", "cardpay", "quarantine", "list",
                                 "--json"], cwd=ROOT, env=env(tmp_path), capture_output=True,
                                text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        by_listener = [r for r in json.loads(listed.stdout)
                       if str(r["source"]).startswith("listener")]
        assert by_listener == [], by_listener[:3]
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                kill_tree(proc)
    assert proc.returncode == 0, err.read_text()[-3000:]
