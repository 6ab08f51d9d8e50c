"""Every metric cardpay's processes export, from their real registries: what the alert rules and
docs/metrics.md are checked against (a metric renamed in the code fails those tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from cardpay.metrics.api import ApiMetrics
from cardpay.metrics.listener import ListenerMetrics
from cardpay.metrics.projector import ProjectorMetrics
from cardpay.metrics.relay import RelayMetrics
from cardpay.metrics.sagas import SagaMetrics
from cardpay.metrics.state import StateMetrics

SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum",
                                                             "_created"),
            "gauge": ("",), "summary": ("", "_count", "_sum", "_created")}


def registries() -> dict[str, CollectorRegistry]:
    """Each process's registry, built as its composition root builds it."""
    api = ApiMetrics()
    StateMetrics(api.registry)
    return {"api": api.registry, "listener": ListenerMetrics().registry,
            "projector": ProjectorMetrics().registry, "relay": RelayMetrics().registry,
            "sagas": SagaMetrics().registry}


def families() -> dict[str, str]:
    """Metric family name (as documented: counters with `_total`) -> its type."""
    found: dict[str, str] = {}
    for registry in registries().values():
        for family in registry.collect():
            name = family.name + ("_total" if family.type == "counter" else "")
            found[name] = family.type
    return found


def series_names() -> set[str]:
    """Every series name a scrape can show (a histogram's `_bucket`, a counter's `_total`...)."""
    names: set[str] = set()
    for registry in registries().values():
        for family in registry.collect():
            names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names
