"""Prometheus metrics from a real listener run on Anvil, served over HTTP on loopback."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import requests
from prometheus_client import generate_latest
from sqlalchemy import Engine

from cardpay.bootstrap.demo import chain_config
from cardpay.bootstrap.listen import build_listener
from cardpay.metrics import ListenerMetrics
from cardpay.settings import Settings
from listener.quarantine import REASON_CLASSES

pytestmark = pytest.mark.integration


def _value(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
        if not labels and line.startswith(f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{wanted}}} not exported")


def test_listener_metrics_follow_the_index(local_chain: Any, anvil_node: Any,
                                           pg_engine: Engine) -> None:
    for i in range(3):
        local_chain.spend("EURe", i, (i + 1) * 10**18)
    local_chain.refund("EURe", 0, 10**17)  # unmatched: quarantined
    metrics = ListenerMetrics(listener="m")
    settings = Settings(confirmations=0, listener_name="m")
    listener = build_listener(settings, pg_engine, chain_config(local_chain.deployment),
                              rpc_url=local_chain.rpc_url,
                              start_block=local_chain.deployment.deployed_at_block,
                              metrics=metrics)
    listener.run_until_caught_up()
    anvil_node.rpc("anvil_reorg", [2, []])
    listener.run_until_caught_up()
    head = int(anvil_node.rpc("eth_blockNumber"), 16)

    text = generate_latest(metrics.registry).decode()
    assert _value(text, "cardpay_listener_processed_block", listener="m") == head
    assert _value(text, "cardpay_listener_lag_blocks", listener="m") == 0
    assert _value(text, "cardpay_listener_transfers_total", listener="m",
                  **{"class": "card_spend"}) >= 3
    assert _value(text, "cardpay_listener_reorgs_total", listener="m") == 1
    assert _value(text, "cardpay_listener_reorg_depth_blocks_sum", listener="m") == 2
    assert _value(text, "cardpay_rpc_latency_seconds_count", method="eth_getLogs") >= 1
    assert _value(text, "cardpay_listener_quarantined_total", listener="m",
                  reason="unmatched_refund") == 1  # the refund
    quarantined = [line for line in text.splitlines()
                   if line.startswith("cardpay_listener_quarantined_total{")]
    assert {line.split('reason="')[1].split('"')[0] for line in quarantined} == \
        set(REASON_CLASSES)  # a bounded label, every class exported from the first scrape
    assert sum(float(line.rsplit(" ", 1)[1]) for line in quarantined) == 1

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    metrics.serve(port)
    served = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert "cardpay_listener_processed_block" in served
