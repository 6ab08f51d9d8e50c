"""`cardpay deploy / backfill / listen` as processes on real Anvil and PostgreSQL.

kill -9 at random points during backfill and live indexing, then restart: the result equals a
fresh, uninterrupted index of the same chain. A backfill followed by `listen` leaves no gap and no
duplicate at the handoff.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from cardpay.devstack.local_chain import LocalChain, LocalDeployment
from cardpay.postgres.schema import chain_activity, chain_cursor
from tests.support.indexing import canonical_views, fresh_index, project

pytestmark = pytest.mark.e2e


def _env(pg_url: str, rpc_url: str, deployment: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "CARDPAY_DATABASE_URL": pg_url, "CARDPAY_RPC_URL": rpc_url,
            "CARDPAY_CONFIRMATIONS": "0", "CARDPAY_DATA_DIR": str(deployment.parent), **extra}


def _cardpay(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "cardpay.cli.main", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _deploy(anvil_node: Any, tmp_path: Path) -> tuple[LocalChain, Path]:
    out = tmp_path / "local-deployment.json"
    proc = subprocess.run([sys.executable, "-m", "cardpay.cli.main", "deploy", "--rpc-url",
                           anvil_node.rpc_url, "--cardholders", "4", "--out", str(out), "--no-cards"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    deployment = LocalDeployment.from_dict(json.loads(out.read_text()))
    return LocalChain(anvil_node.rpc_url, deployment), out


def _cursor(engine: Engine) -> int:
    with engine.connect() as conn:
        value = conn.execute(select(chain_cursor.c.block_number)).scalar()
    return -1 if value is None else int(value)


def _spends(chain: LocalChain, n: int, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(n // 10):  # ten per block keeps block count and runtime small
        chain.spend_many([(rng.choice(["EURe", "USDCe"]), rng.randrange(4),
                           rng.randint(1, 10**6)) for _ in range(10)])
        chain.w3.provider.make_request("anvil_mine", ["0x1"])  # type: ignore[arg-type]




def _kill_when(proc: subprocess.Popen[str], ready: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"exited early ({proc.returncode}): {proc.stderr.read()[-2000:]}")  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "no progress before the deadline"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def _listen_to_the_head(env: dict[str, str], anvil_node: Any, engine: Engine) -> None:
    """`cardpay listen` until its cursor reaches the node's head, then a clean SIGTERM stop."""
    live = _cardpay(env, "listen", "--poll-interval", "0.05")
    end = int(anvil_node.rpc("eth_blockNumber"), 16)
    deadline = time.monotonic() + 120
    while _cursor(engine) < end:
        assert live.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    live.send_signal(signal.SIGTERM)
    assert live.wait(timeout=30) == 0


def test_kill_9_during_backfill_and_live_then_restart_equals_an_uninterrupted_run(
    anvil_node: Any, pg_url: str, pg_engine: Engine, make_db: Any, tmp_path: Path
) -> None:
    chain, deployment = _deploy(anvil_node, tmp_path)
    _spends(chain, 300, seed=5)
    env = _env(pg_url, anvil_node.rpc_url, deployment, CARDPAY_MAX_BLOCK_RANGE="3")
    first = str(chain.deployment.deployed_at_block)
    head = int(anvil_node.rpc("eth_blockNumber"), 16)
    rng = random.Random(8)
    for _ in range(3):  # backfill, killed at random cursor positions
        target = rng.randint(_cursor(pg_engine) + 1, head - 2)
        proc = _cardpay(env, "backfill", "--from-block", first)
        _kill_when(proc, lambda t=target: _cursor(pg_engine) >= t)
        assert proc.returncode == -signal.SIGKILL
    proc = _cardpay(env, "backfill", "--from-block", first)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()  # type: ignore[union-attr]
    assert _cursor(pg_engine) == head

    live = _cardpay(env, "listen", "--poll-interval", "0.05")
    _spends(chain, 100, seed=6)  # the chain grows while the listener runs
    _kill_when(live, lambda: _cursor(pg_engine) > head)
    _spends(chain, 50, seed=7)
    _listen_to_the_head(env, anvil_node, pg_engine)

    project(pg_engine)
    assert canonical_views(pg_engine) == fresh_index(make_db, chain)
    with pg_engine.connect() as conn:
        kinds = dict(conn.execute(select(chain_activity.c.kind, func.count())
                                  .group_by(chain_activity.c.kind)).all())
    assert kinds == {"card_spend": 450, "top_up": 8}  # 4 cardholders funded in 2 tokens


def test_backfill_then_listen_hands_over_with_no_gap_or_duplicate(
    anvil_node: Any, pg_url: str, pg_engine: Engine, make_db: Any, tmp_path: Path
) -> None:
    chain, deployment = _deploy(anvil_node, tmp_path)
    _spends(chain, 60, seed=1)
    env = _env(pg_url, anvil_node.rpc_url, deployment, CARDPAY_PROGRESS="1")
    backfill = _cardpay(env, "backfill", "--from-block", str(chain.deployment.deployed_at_block))
    out, err = backfill.communicate(timeout=120)
    assert backfill.returncode == 0, err
    assert "backfilled blocks" in out and "blocks" in err and "ETA" in err  # the progress bar
    _spends(chain, 40, seed=2)  # blocks that land between the backfill and live indexing
    _listen_to_the_head(env, anvil_node, pg_engine)
    project(pg_engine)
    assert canonical_views(pg_engine) == fresh_index(make_db, chain)


def test_backfill_refuses_to_leave_a_gap(anvil_node: Any, pg_url: str, tmp_path: Path) -> None:
    chain, deployment = _deploy(anvil_node, tmp_path)
    _spends(chain, 20, seed=3)
    env = _env(pg_url, anvil_node.rpc_url, deployment)
    first = chain.deployment.deployed_at_block
    ok = _cardpay(env, "backfill", "--from-block", str(first), "--to-block", str(first + 2))
    assert ok.wait(timeout=60) == 0
    gap = _cardpay(env, "backfill", "--from-block", str(first + 10))
    _, err = gap.communicate(timeout=60)
    assert gap.returncode == 2
    assert f"would skip blocks {first + 3}..{first + 9}" in err


def _finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def test_a_reorg_deeper_than_the_window_names_the_reset_that_recovers(
    anvil_node: Any, pg_url: str, pg_engine: Engine, make_db: Any, tmp_path: Path
) -> None:
    chain, deployment = _deploy(anvil_node, tmp_path)
    _spends(chain, 20, seed=11)  # before the fork: stays canonical
    last_kept_spend = int(anvil_node.rpc("eth_blockNumber"), 16) - 1  # then one empty block
    anvil_node.rpc("anvil_mine", ["0x3"])
    fork = int(anvil_node.rpc("eth_blockNumber"), 16)
    orphaned = chain.spend("EURe", 1, 7 * 10**17)  # gone after the reorg
    _spends(chain, 20, seed=12)
    anvil_node.rpc("anvil_mine", [hex(300)])  # deeper than the 256-block window
    env = _env(pg_url, anvil_node.rpc_url, deployment)
    first = str(chain.deployment.deployed_at_block)
    status, _, err = _finish(_cardpay(env, "backfill", "--from-block", first))
    assert status == 0, err

    depth = int(anvil_node.rpc("eth_blockNumber"), 16) - fork
    raw = anvil_node.rpc("eth_getRawTransactionByHash", [orphaned])
    anvil_node.rpc("anvil_reorg", [depth, [[raw, 5]]])  # the spend lands in another block
    anvil_node.rpc("anvil_mine", ["0x1"])
    expected = f"cardpay listener reset main --from-block {last_kept_spend + 1}"
    for args in (("listen", "--poll-interval", "0.05"), ("backfill",)):
        status, _, err = _finish(_cardpay(env, *args))
        lines = [line for line in err.splitlines() if line.strip()]
        assert status == 1, err
        assert "Traceback" not in err
        assert lines[-1].startswith(f"cardpay {args[0]}: block ") and expected in lines[-1], lines
        assert "deeper than the kept window" in lines[-1]

    status, out, err = _finish(_cardpay(env, "listener", "reset", "main", "--from-block",
                                        str(last_kept_spend + 1)))
    assert status == 0, err
    assert "retracted" in out
    status, _, err = _finish(_cardpay(env, "backfill", "--from-block", str(last_kept_spend + 1)))
    assert status == 0, err
    project(pg_engine)
    assert canonical_views(pg_engine) == fresh_index(make_db, chain)


def test_a_restarted_node_is_refused_until_the_listener_is_reset(
    anvil_node: Any, pg_url: str, pg_engine: Engine, make_db: Any, tmp_path: Path
) -> None:
    from cardpay.devstack.anvil import AnvilNode

    _, deployment = _deploy(anvil_node, tmp_path)
    env = _env(pg_url, anvil_node.rpc_url, deployment)
    status, _, err = _finish(_cardpay(env, "backfill", "--from-block", "0"))
    assert status == 0, err
    with AnvilNode(extra_args=["--timestamp", str(int(time.time()) + 10_000)]) as node:
        chain, deployment = _deploy(node, tmp_path)  # same chain id, another genesis
        _spends(chain, 20, seed=13)
        env = _env(pg_url, node.rpc_url, deployment)
        for args in (("backfill",), ("listen",)):
            status, _, err = _finish(_cardpay(env, *args))
            lines = [line for line in err.splitlines() if line.strip()]
            assert status == 1 and "Traceback" not in err, err
            assert "(a new chain); run `cardpay listener reset main`" in lines[-1]
        status, _, err = _finish(_cardpay(env, "listener", "reset"))
        assert status == 0, err
        status, _, err = _finish(_cardpay(env, "backfill", "--from-block", "0"))
        assert status == 0, err
        project(pg_engine)
        assert canonical_views(pg_engine) == fresh_index(make_db, chain)


def test_listen_metrics_hold_the_stored_cursor_from_the_first_scrape(
    anvil_node: Any, pg_url: str, tmp_path: Path
) -> None:
    import requests

    chain, deployment = _deploy(anvil_node, tmp_path)
    _spends(chain, 10, seed=14)
    env = _env(pg_url, anvil_node.rpc_url, deployment)
    status, _, err = _finish(_cardpay(env, "backfill", "--from-block", "0"))
    assert status == 0, err
    head = int(anvil_node.rpc("eth_blockNumber"), 16)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    live = _cardpay(env, "listen", "--poll-interval", "60", "--metrics-port", str(port))
    try:
        deadline = time.monotonic() + 60
        while True:  # the first answer the port gives
            assert live.poll() is None and time.monotonic() < deadline
            try:
                text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                break
            except requests.ConnectionError:
                time.sleep(0.05)
    finally:
        live.send_signal(signal.SIGTERM)
        live.wait(timeout=30)
    values = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(("cardpay_listener_processed_block{",
                                  "cardpay_chain_head_block{", "cardpay_listener_lag_blocks{"))}
    assert values == {"cardpay_listener_processed_block": head,
                      "cardpay_chain_head_block": head, "cardpay_listener_lag_blocks": 0}


def test_a_node_restarted_under_a_running_listener_stops_it_naming_the_reset(
    anvil_node: Any, pg_url: str, tmp_path: Path
) -> None:
    """The same URL now serves a new chain (a proxy switched to another Anvil): the cursor's
    block is gone, no kept hash is canonical, and `listen` says the chain changed."""
    from cardpay.devstack.anvil import AnvilNode
    from tests.support.faulty_proxy import Faults, FaultyProxy

    chain, deployment = _deploy(anvil_node, tmp_path)
    _spends(chain, 10, seed=15)
    with FaultyProxy(anvil_node.rpc_url, Faults()) as proxy, \
            AnvilNode(extra_args=["--timestamp", str(int(time.time()) + 10_000)]) as restarted:
        env = _env(pg_url, proxy.url, deployment)
        status, _, err = _finish(_cardpay(env, "backfill", "--from-block", "0"))
        assert status == 0, err
        live = _cardpay(env, "listen", "--poll-interval", "0.05")
        LocalChain(restarted.rpc_url).deploy(4)
        restarted.rpc("anvil_mine", [hex(100)])  # past the old cursor: not merely behind
        proxy.upstream = restarted.rpc_url
        status, _, err = _finish(live, timeout=120)
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 1 and "Traceback" not in err, err
    assert lines[-1].startswith("cardpay listen: listener 'main' indexed chain 31337")
    assert "(a new chain); run `cardpay listener reset main`" in lines[-1]
