"""What the dashboard and the alert rules ask Prometheus, taken apart for the tests: each panel's
and each alert's expression, the metric selectors in them, the metric families they name.

Why a regex and not a PromQL parser: every cardpay metric starts with `cardpay_`, no label value
in the rules or the dashboard holds a `}`, and Debian's Prometheus (2.42) has no parse endpoint.
A selector is a metric name and its optional `{...}` matchers, e.g.
`cardpay_open_exceptions{source=~"saga.*"}`; a range (`[5m]`) is not part of it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "cardpay.json"
ALERTS = ROOT / "docker" / "prometheus" / "alerts.yml"
METRICS_DOC = ROOT / "docs" / "metrics.md"
RATE_INTERVAL = "1m"
"""What the test puts for Grafana's `$__rate_interval`: Grafana's own value with the data
source's 15 s scrape interval (four of them)."""

SELECTOR = re.compile(r"\b(cardpay_[a-zA-Z0-9_:]*[a-zA-Z0-9_])(\{[^}]*\})?")
THRESHOLD = re.compile(r"\s*(==|!=|>=|<=|>|<)\s*[-+]?[0-9.]+(e[-+]?[0-9]+)?\s*$", re.I)
VARIABLE = re.compile(r"\$\{?\w+\}?")
HISTOGRAM_SERIES = ("_bucket", "_count", "_sum")


def dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def panels(model: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too (rows themselves excluded)."""
    for panel in model.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def panel_queries(model: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title / refId, PromQL expression) of every query of every panel."""
    return [(f"{p['title']} / {t['refId']}", t["expr"])
            for p in panels(model) for t in p.get("targets", [])]


def alert_rules(path: Path = ALERTS) -> list[dict[str, Any]]:
    data = yaml.safe_load(path.read_text())
    return [r for g in data["groups"] for r in g["rules"] if "alert" in r]


def without_threshold(expr: str) -> str:
    """An alert's expression without its final comparison with a number (`X > 300` -> `X`):
    the series the alert compares, which must exist whether or not the alert fires. Raises
    when there is no such comparison (the rule's form changed: decide anew what to check)."""
    stripped = THRESHOLD.sub("", " ".join(expr.split()))
    if stripped == " ".join(expr.split()):
        raise ValueError(f"no final comparison with a number in {expr!r}")
    return stripped


def instant(expr: str) -> str:
    """A dashboard expression as Prometheus can evaluate it: Grafana's `$__rate_interval` put
    in; any other variable refused (the dashboard has none; one would need a value here)."""
    out = " ".join(expr.replace("$__rate_interval", RATE_INTERVAL).split())
    if VARIABLE.search(out):
        raise ValueError(f"unresolved Grafana variable in {expr!r}")
    return out


def selectors(expr: str) -> list[str]:
    """The metric selectors of `expr`, once each, in order."""
    return list(dict.fromkeys(m.group(0) for m in SELECTOR.finditer(expr)))


def metric_names(expr: str) -> set[str]:
    return {m.group(1) for m in SELECTOR.finditer(expr)}


def documented(path: Path = METRICS_DOC) -> dict[str, str]:
    """The metrics of docs/metrics.md's tables: name (first column, in backticks) -> type."""
    return dict(re.findall(r"^\| `(cardpay_[a-z0-9_]+)` \| (\w+) \|", path.read_text(), re.M))


def family(name: str, known: Mapping[str, str]) -> str | None:
    """The documented family a series name belongs to (a histogram `x`'s `x_bucket`, `x_count`
    and `x_sum` -> `x`), or None."""
    if name in known:
        return name
    for suffix in HISTOGRAM_SERIES:
        base = name.removesuffix(suffix)
        if name.endswith(suffix) and known.get(base) == "histogram":
            return base
    return None


def undocumented(exprs: Sequence[str], known: Mapping[str, str]) -> list[str]:
    return sorted({n for e in exprs for n in metric_names(e) if family(n, known) is None})


Query = Callable[[str], list[dict[str, Any]]]
"""An instant query: PromQL -> the result vector (empty: no data)."""


def checks(model: dict[str, Any], rules: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(what, PromQL) that must each return data: every panel query as Grafana sends it,
    every alert's expression without its threshold, and every selector of either alone (so an
    `or vector(0)` or an aggregation cannot hide a selector that matches nothing)."""
    out: list[tuple[str, str]] = []
    for what, expr in panel_queries(model):
        out.append((f"panel {what}", instant(expr)))
        out += [(f"panel {what}: selector", s) for s in selectors(instant(expr))]
    for rule in rules:
        expr = without_threshold(rule["expr"])
        out.append((f"alert {rule['alert']}", expr))
        out += [(f"alert {rule['alert']}: selector", s) for s in selectors(expr)]
    return list(dict.fromkeys(out))


def without_data(query: Query, todo: Sequence[tuple[str, str]]) -> list[str]:
    """What returned no data, one line each."""
    return [f"{what}: {expr}" for what, expr in todo if not query(expr)]
