#!/usr/bin/env python3
"""Generate docker/grafana/dashboards/cardpay.json, the cardpay Grafana dashboard.

Why a generator: twenty-odd panels in six rows differ only in title, query, unit and position;
written out by hand, a grid position or a data source is easy to get wrong in one of them. The
JSON is committed too (Grafana provisions the file, not this script), and
tests/unit/test_dashboard.py fails when the two differ, so edit this file and run

    python tools/grafana_dashboard.py            # rewrites the JSON
    python tools/grafana_dashboard.py --check    # exit 1 when the JSON is not this output

Every query names only metrics of docs/metrics.md (checked by tests/unit/test_dashboard.py) and
returns data from a running stack under the simulator's workload (checked against a real
Prometheus by tests/e2e/test_prometheus_scrape.py). Rates use Grafana's `$__rate_interval`
(four scrape intervals at least: one minute with the data source's 15 s).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docker" / "grafana" / "dashboards" / "cardpay.json"
DATASOURCE = {"type": "prometheus", "uid": "cardpay-prometheus"}
"""The provisioned data source (docker/grafana/provisioning/datasources/prometheus.yaml)."""
UID = "cardpay-overview"
WIDTH = 24
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 8
    height: int = 8


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


def q(expr: str, legend: str = "") -> Query:
    return Query(" ".join(expr.split()), legend)


ROWS: tuple[Row, ...] = (
    Row("Authorizations", (
        Panel("Authorization decisions by outcome and reason",
              "Authorizations decided and committed per second (cardpay_authorization_decisions"
              "_total): approved, partial or declined, and the decline reason.",
              (q(f"sum by (outcome, reason) (rate(cardpay_authorization_decisions_total[{RATE}]))",
                 "{{outcome}} {{reason}}"),), unit="reqps"),
        Panel("API latency p50 by route",
              "Median HTTP latency of the API by route template (cardpay_api_request_seconds).",
              (q("histogram_quantile(0.5, sum by (le, route) "
                 f"(rate(cardpay_api_request_seconds_bucket[{RATE}])))", "{{route}}"),),
              unit="s"),
        Panel("API latency p99 by route",
              "99th percentile HTTP latency by route template. The authorization budget is "
              "100 ms (alert CardpayAuthorizationLatencyOverBudget).",
              (q("histogram_quantile(0.99, sum by (le, route) "
                 f"(rate(cardpay_api_request_seconds_bucket[{RATE}])))", "{{route}}"),),
              unit="s"),
    )),
    Row("Webhooks rejected", (
        Panel("Webhook requests refused (401/413) by reason",
              "Network requests refused before anything was stored "
              "(cardpay_webhook_rejections_total): unsigned, stale, bad signature, too large...",
              (q(f"sum by (reason) (rate(cardpay_webhook_rejections_total[{RATE}]))",
                 "{{reason}}"),), unit="reqps", width=12),
        Panel("Signed bodies quarantined by reason",
              "Signed network bodies refused and quarantined (cardpay_network_rejected_total): "
              "not JSON, schema, unknown type, invalid.",
              (q(f"sum by (reason) (rate(cardpay_network_rejected_total[{RATE}]))",
                 "{{reason}}"),), unit="reqps", width=12),
    )),
    Row("Sagas", (
        Panel("Saga steps by kind and message",
              "Saga reactions committed per second (cardpay_saga_steps_total).",
              (q(f"sum by (kind, message) (rate(cardpay_saga_steps_total[{RATE}]))",
                 "{{kind}} {{message}}"),), unit="ops"),
        Panel("Saga effect retries by kind and effect",
              "Side effects requested again after a failed or silent try "
              "(cardpay_saga_retries_total).",
              (q(f"sum by (kind, effect) (rate(cardpay_saga_retries_total[{RATE}]))",
                 "{{kind}} {{effect}}"),), unit="ops"),
        Panel("Saga compensations by kind",
              "Sagas that started undoing their steps (cardpay_saga_compensations_total).",
              (q(f"sum by (kind) (rate(cardpay_saga_compensations_total[{RATE}]))",
                 "{{kind}}"),), unit="ops"),
        Panel("Open exceptions by source",
              "Unresolved exceptions and quarantined items (cardpay_open_exceptions); the saga "
              "ones wait for a person (`cardpay exceptions list`).",
              (q("sum by (source) (cardpay_open_exceptions)", "{{source}}"),)),
        Panel("Saga timers due and not fired",
              "Timers already due (cardpay_saga_timers_due): above 0 for long, no saga worker "
              "fires them.",
              (q("max(cardpay_saga_timers_due)", "due"),)),
        Panel("Saga timers fired by kind and outcome",
              "Due timers taken (cardpay_saga_timers_fired_total): advanced or ignored.",
              (q(f"sum by (kind, outcome) (rate(cardpay_saga_timers_fired_total[{RATE}]))",
                 "{{kind}} {{outcome}}"),), unit="ops"),
    )),
    Row("Ledger", (
        Panel("Ledger balanced",
              "1 when every ledger's debits equal its credits (cardpay_ledger_balanced); 0 "
              "pages (CardpayLedgerImbalance).",
              (q("min(cardpay_ledger_balanced)", "balanced"),), kind="stat", width=6),
        Panel("Ledger transfers recorded by code",
              "Transfers recorded per second by transfer code (cardpay_ledger_transfers is a "
              "running total read from the database).",
              (q(f"sum by (code) (rate(cardpay_ledger_transfers[{RATE}]))", "{{code}}"),),
              unit="ops", width=9),
        Panel("Ledger transfers, total by code",
              "Ledger transfers recorded so far, by transfer code.",
              (q("sum by (code) (cardpay_ledger_transfers)", "{{code}}"),), width=9),
    )),
    Row("Feeds", (
        Panel("Listener lag (blocks)",
              "Chain head minus the listener's last indexed block "
              "(cardpay_listener_lag_blocks).",
              (q("max by (listener) (cardpay_listener_lag_blocks)", "{{listener}}"),)),
        Panel("Listener lag (seconds)",
              "Now minus the last indexed block's time (cardpay_listener_lag_seconds); alert "
              "over 5 minutes.",
              (q("max by (listener) (cardpay_listener_lag_seconds)", "{{listener}}"),),
              unit="s"),
        Panel("Projector and saga worker lag (messages)",
              "Feed messages beyond each projector's position (cardpay_projector_lag_messages) "
              "and the saga worker's (cardpay_saga_lag_messages).",
              (q("max by (projector) (cardpay_projector_lag_messages)", "{{projector}}"),
               q("max(cardpay_saga_lag_messages)", "saga worker"))),
        Panel("Event-log consumers' lag (events)",
              "Events in the PostgreSQL event log beyond each consumer's stored position "
              "(cardpay_feed_lag_events; consumers on the log feed only).",
              (q("max by (consumer) (cardpay_feed_lag_events)", "{{consumer}}"),)),
        Panel("Relay outbox backlog",
              "Outbox rows not yet published to Kafka (cardpay_relay_outbox_backlog; only "
              "with `cardpay relay`).",
              (q("max(cardpay_relay_outbox_backlog)", "unpublished"),)),
        Panel("Relay oldest unpublished row's age",
              "Age of the oldest outbox row not yet published "
              "(cardpay_relay_oldest_unpublished_age_seconds); alert over 2 minutes.",
              (q("max(cardpay_relay_oldest_unpublished_age_seconds)", "age"),), unit="s"),
    )),
    Row("Reconciliation", (
        Panel("Reconciliation breaks per currency",
              "Breaks between chain, ledger and the network's report over the two latest "
              "settled days (cardpay_reconciliation_breaks); `cardpay reconcile --day DAY` "
              "lists them.",
              (q("max by (currency) (cardpay_reconciliation_breaks)", "{{currency}}"),),
              width=12),
        Panel("State gauges' age",
              "Seconds since the API last refreshed the state gauges "
              "(cardpay_state_refreshed_timestamp_seconds); the ledger, exception, timer and "
              "reconciliation panels are this old.",
              (q("time() - max(cardpay_state_refreshed_timestamp_seconds)", "age"),),
              unit="s", width=12),
    )),
)


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": panel_id, "type": panel.kind, "title": panel.title,
        "description": panel.description, "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "targets": [{"refId": chr(ord("A") + n), "datasource": DATASOURCE, "expr": query.expr,
                     "legendFormat": query.legend or "__auto", "range": True}
                    for n, query in enumerate(panel.queries)],
    }
    if panel.kind == "timeseries":
        out["options"] = {"legend": {"displayMode": "list", "placement": "bottom"},
                          "tooltip": {"mode": "multi", "sort": "desc"}}
    else:
        out["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "",
                                            "values": False}, "colorMode": "background"}
        out["fieldConfig"]["defaults"]["thresholds"] = {
            "mode": "absolute", "steps": [{"color": "red", "value": None},
                                          {"color": "green", "value": 1}]}
    return out


def build() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model (schema version 39: Grafana 10/11)."""
    panels: list[dict[str, Any]] = []
    y, next_id = 0, 1
    for row in ROWS:
        panels.append({"id": next_id, "type": "row", "title": row.title, "collapsed": False,
                       "gridPos": {"h": 1, "w": WIDTH, "x": 0, "y": y}, "panels": []})
        next_id, y, x, height = next_id + 1, y + 1, 0, 0
        for panel in row.panels:
            if x + panel.width > WIDTH:
                x, y, height = 0, y + height, 0
            panels.append(_panel(panel, next_id, x, y))
            next_id, x, height = next_id + 1, x + panel.width, max(height, panel.height)
        y += height
    return {
        "uid": UID, "title": "cardpay", "tags": ["cardpay"], "editable": False,
        "description": "cardpay's processes: authorizations, webhooks, sagas, ledger, feeds, "
                       "reconciliation (metrics: docs/metrics.md). Generated by "
                       "tools/grafana_dashboard.py.",
        "schemaVersion": 39, "version": 1, "refresh": "30s", "timezone": "utc",
        "time": {"from": "now-6h", "to": "now"}, "graphTooltip": 1,
        "templating": {"list": []}, "annotations": {"list": []}, "links": [],
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help=f"exit 1 when {OUT.relative_to(ROOT)} differs from the output")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not args.out.is_file() or args.out.read_text() != text:
            print(f"{args.out} is not tools/grafana_dashboard.py's output: run it",
                  file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
