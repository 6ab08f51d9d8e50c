"""The Grafana dashboard without a Prometheus: the committed JSON is the generator's output,
every panel reads the provisioned data source, every metric it names is documented in
docs/metrics.md (so one renamed in the code and the docs, or misspelt here, fails), and the
expression helpers the Prometheus test relies on take expressions apart as it assumes.
Whether each query returns data is tests/e2e/test_prometheus_scrape.py's part."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support import promql
from tools import grafana_dashboard

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def model() -> dict[str, Any]:
    return promql.dashboard()


def test_the_committed_json_is_the_generators_output() -> None:
    assert promql.DASHBOARD.read_text() == grafana_dashboard.render(), (
        "run python tools/grafana_dashboard.py")
    assert grafana_dashboard.main(["--check"]) == 0


def test_the_check_mode_fails_on_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "cardpay.json"
    stale.write_text(grafana_dashboard.render().replace("cardpay_ledger_balanced", "x"))
    assert grafana_dashboard.main(["--check", "--out", str(stale)]) == 1


def test_it_has_the_rows_the_issue_asks_for_and_every_panel_reads_the_provisioned_source(
        model: dict[str, Any]) -> None:
    rows = [p["title"] for p in model["panels"] if p["type"] == "row"]
    assert rows == ["Authorizations", "Webhooks rejected", "Sagas", "Ledger", "Feeds",
                    "Reconciliation"]
    panels = list(promql.panels(model))
    assert len(panels) >= 20
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "cardpay-prometheus"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "cardpay-prometheus", panel["title"]
    ids = [p["id"] for p in model["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:  # inside the 24-column grid
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24 and pos["w"] > 0 and pos["h"] > 0


def test_the_issue_s_metrics_each_have_a_panel(model: dict[str, Any]) -> None:
    named = {n for _, e in promql.panel_queries(model) for n in promql.metric_names(e)}
    for metric in ("cardpay_authorization_decisions_total", "cardpay_api_request_seconds_bucket",
                   "cardpay_webhook_rejections_total", "cardpay_saga_steps_total",
                   "cardpay_saga_retries_total", "cardpay_saga_compensations_total",
                   "cardpay_open_exceptions", "cardpay_saga_timers_due",
                   "cardpay_ledger_balanced", "cardpay_ledger_transfers",
                   "cardpay_listener_lag_blocks", "cardpay_listener_lag_seconds",
                   "cardpay_projector_lag_messages", "cardpay_feed_lag_events",
                   "cardpay_relay_outbox_backlog", "cardpay_relay_oldest_unpublished_age_seconds",
                   "cardpay_reconciliation_breaks"):
        assert metric in named, metric


def test_every_metric_the_dashboard_names_is_documented(model: dict[str, Any]) -> None:
    known = promql.documented()
    assert len(known) > 40  # the tables were read
    assert known["cardpay_api_request_seconds"] == "histogram"
    exprs = [e for _, e in promql.panel_queries(model)]
    assert promql.undocumented(exprs, known) == []


def test_a_renamed_metric_in_the_dashboard_is_caught(tmp_path: Path) -> None:
    copy = tmp_path / "cardpay.json"
    copy.write_text(promql.DASHBOARD.read_text().replace(
        "cardpay_projector_lag_messages", "cardpay_projector_lag"))
    exprs = [e for _, e in promql.panel_queries(promql.dashboard(copy))]
    assert promql.undocumented(exprs, promql.documented()) == ["cardpay_projector_lag"]


def test_selectors_and_families() -> None:
    expr = ('(sum(rate(cardpay_webhook_rejections_total[5m])) or vector(0)) + '
            'sum(cardpay_open_exceptions{source=~"saga.*"}) + '
            'histogram_quantile(0.99, sum by (le) (rate(cardpay_api_request_seconds_bucket'
            '{route="/v1/network/authorizations"}[5m])))')
    assert promql.selectors(expr) == [
        "cardpay_webhook_rejections_total", 'cardpay_open_exceptions{source=~"saga.*"}',
        'cardpay_api_request_seconds_bucket{route="/v1/network/authorizations"}']
    known = {"cardpay_api_request_seconds": "histogram", "cardpay_open_exceptions": "gauge"}
    assert promql.family("cardpay_api_request_seconds_bucket", known) == \
        "cardpay_api_request_seconds"
    assert promql.family("cardpay_open_exceptions", known) == "cardpay_open_exceptions"
    assert promql.family("cardpay_open_exceptions_bucket", known) is None
    assert promql.family("cardpay_api_request_seconds_total", known) is None


def test_every_alert_loses_exactly_its_threshold() -> None:
    rules = promql.alert_rules()
    assert len(rules) >= 11
    for rule in rules:
        stripped = promql.without_threshold(rule["expr"])
        assert promql.selectors(stripped) == promql.selectors(rule["expr"]), rule["alert"]
        assert not promql.THRESHOLD.search(stripped), rule["alert"]
    assert promql.without_threshold("min(cardpay_ledger_balanced) == 0") == \
        "min(cardpay_ledger_balanced)"
    assert promql.without_threshold("time() - max(x) > 300") == "time() - max(x)"
    with pytest.raises(ValueError, match="no final comparison"):
        promql.without_threshold("max(cardpay_saga_timers_due)")


def test_rate_interval_is_filled_in_and_other_variables_are_refused() -> None:
    assert promql.instant("rate(x[$__rate_interval])") == "rate(x[1m])"
    with pytest.raises(ValueError, match="unresolved Grafana variable"):
        promql.instant('x{job="$job"}')


def test_checks_cover_every_panel_query_alert_and_selector(model: dict[str, Any]) -> None:
    rules = promql.alert_rules()
    todo = promql.checks(model, rules)
    whats = {w for w, _ in todo}
    for what, _ in promql.panel_queries(model):
        assert f"panel {what}" in whats
    for rule in rules:
        assert f"alert {rule['alert']}" in whats
    # a selector hidden behind `or vector(0)` is checked on its own
    assert ("alert CardpayWebhookRejectionsSpike: selector",
            "cardpay_network_rejected_total") in todo
    answered: dict[str, list[dict[str, Any]]] = {"cardpay_network_rejected_total": []}

    def query(expr: str) -> list[dict[str, Any]]:
        return answered.get(expr, [{"value": [0, "1"]}])

    assert promql.without_data(query, todo) == [
        "panel Signed bodies quarantined by reason / A: selector: "
        "cardpay_network_rejected_total",
        "alert CardpayWebhookRejectionsSpike: selector: cardpay_network_rejected_total"]
    json.dumps(todo)  # plain data, printable in a failure
