"""Prometheus metrics of the outbox relay: backlog, its oldest row's age, published rows, errors."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from cardpay.runtime.supervise import supervised_errors


class RelayMetrics:
    """One registry per process. Errors are the supervision loop's counter, component "relay"."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.backlog = Gauge("cardpay_relay_outbox_backlog", "Outbox rows not yet published",
                             registry=r)
        self.oldest_unpublished_age = Gauge(
            "cardpay_relay_oldest_unpublished_age_seconds",
            "Age of the oldest unpublished outbox row (0 when none)", registry=r)
        self.published = Counter("cardpay_relay_published_total",
                                 "Outbox rows published and marked", registry=r)
        self.errors = supervised_errors(r)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose /metrics on host:port (loopback by default)."""
        start_http_server(port, addr=host, registry=self.registry)
